"""Unlearning: the hyperparameter groups (`hyperparameters`), the losses (`losses`, pure
functions), the terms of the objective (`objectives`), the update scopes (`scopes`), the METHODS
table (`methods`) and the loop (`loop`)."""
