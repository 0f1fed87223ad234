"""Unlearning: the hyperparameter groups and the study-wide settings (`hyperparameters`), the
losses (`losses`, pure functions), the terms of the objective (`objectives`), the update scopes
(`scopes`), the method families the reports group by (`families`), QUAIL's margin
(`quail_margin`), RMU_LAT's latent adversary (`lat`), the METHODS table (`methods`) and the loop
(`loop`: `unlearn` of an `UnlearnJob`)."""
