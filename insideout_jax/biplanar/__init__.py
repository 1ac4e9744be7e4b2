"""Biplanar X-rays to a registered CT (RadGS-Reg): cases, methods, the experiment and its report."""
