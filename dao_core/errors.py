"""Errors for bad user input; each message names the formula, element, count or file."""


class DAOInputError(ValueError):
    """Invalid user input (formula, element, atom count, file, checkpoint)."""
