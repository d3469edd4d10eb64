"""Sampling beyond the core reverse process (mini_dlm/sampler.py), each hooked in from outside
it: variable length (length.py, notes 07), infilling and classifier-free guidance (infill.py,
guidance.py, notes 08)."""
