"""Data for gradprom_jax: TFDS builders (embedded synthetic default, user folders, official layouts) and
grain pipelines that feed every device of every host.

>>> from gradprom_jax.data import default_data_config
>>> default_data_config().name
'synthetic_lesions'
"""
from gradprom_jax.data.config import default_data_config
from gradprom_jax.data.examples import BadInputError
from gradprom_jax.data.pipeline import EXAMPLE_ID, make_eval_loader, make_train_loader
from gradprom_jax.data.records_builder import ManualDownloadError
from gradprom_jax.data.dataset_spec import DatasetSpec
from gradprom_jax.data.registry import (DATASETS, Dataset, dataset_names, load_dataset,
                                        register_dataset)

__all__ = ["BadInputError", "DATASETS", "Dataset", "DatasetSpec", "EXAMPLE_ID", "ManualDownloadError",
           "dataset_names", "default_data_config", "load_dataset", "make_eval_loader",
           "make_train_loader", "register_dataset"]
