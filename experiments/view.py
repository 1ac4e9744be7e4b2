#!/usr/bin/env python
"""Look inside a run's fused model in the browser: ``python experiments/view.py outputs/skull``."""
from insideout_jax.viewer import main

raise SystemExit(main())
