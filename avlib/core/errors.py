"""The errors that cross layers: a bad parameter, and a stage's input that is not there yet."""


class ParameterError(ValueError):
    """A notebook or command parameter has a value the pipeline cannot use; the message names it."""


class MissingInputError(FileNotFoundError):
    """A stage's input is not there yet; the message says which notebook to run first."""
