"""What the command-line tools print: their own lines, and the libraries' warnings only.

TensorFlow only feeds data here, and TFDS, Orbax, clu and JAX's backend discovery each log
routine INFO lines that read like problems to a newcomer ("Unable to initialize backend
'tpu'" on every CPU machine, "Downloading ... Unknown size" for a dataset built offline,
"value None" for a profile). Their warnings and errors still show.
"""
import logging
import os

# Routine INFO from these libraries is dropped (matched against the logging call's file).
_QUIET_INFO_PATHS = ('/orbax/', '/tensorflow_datasets/', '/clu/platform/', '/tensorflow/python/')
# Routine INFO that other INFO from the same library stands beside.
_QUIET_INFO = (
    'cannot open shared object file',  # JAX: no TPU/GPU plugin installed, so none is used.
)
# Library warnings that are routine here.
_QUIET_WARNINGS = (
    'has no dataset_info.json',  # TFDS, on a dataset not yet prepared: we prepare it.
)


def quiet_tensorflow() -> None:
  """Before TensorFlow is imported: no C++ banners (its oneDNN kernels are for float math,
  and TensorFlow only gathers uint8 pixels here)."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')


class _LibraryNoise(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.WARNING:
      return not (any(part in record.pathname for part in _QUIET_INFO_PATHS) or
                  any(text in record.getMessage() for text in _QUIET_INFO))
    if record.levelno == logging.WARNING:
      return not any(text in record.getMessage() for text in _QUIET_WARNINGS)
    return True


def quiet_libraries() -> None:
  """Filters the absl log handler (where absl, JAX, TFDS, Orbax and clu all log)."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _LibraryNoise) for f in handler.filters):
    handler.addFilter(_LibraryNoise())
