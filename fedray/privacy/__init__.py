"""Privacy mechanisms as pure functions over numpy arrays (no torch, no Ray): run where the data is,
in a site's process or the controller's, and checked by `fedray.config.validate` before anything starts.

`flare_filters`: FLARE's task-result privacy filters (ExcludeVars, PercentilePrivacy, SVTPrivacy).
"""
