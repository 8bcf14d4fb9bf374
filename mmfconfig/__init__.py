"""mmfconfig: MMF-style run configs resolved once, below both `mmfdata` and `mmftrain` (it imports neither).

`resolve.build_config(argv)` reads configs/defaults.yaml, the model's and datasets' defaults, the user's config
file (with `includes:`), MMF's `-co` mapping and `key=value` overrides; `compat` owns the MMF keys renamed or not
implemented here, `paths` how a path-valued key is found (as MMF: the working directory first, then the project's
configs). Imports only `zoo` (no torch, no numpy).
"""
