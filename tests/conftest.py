"""Shared test settings: warnings from deliberately broken seeded-bug kernels are expected."""
import warnings

import numpy as np

np.seterr(all="ignore")
warnings.filterwarnings("ignore", category=RuntimeWarning)
