"""Few-step students (distill.py, notes 10): SDTT, two teacher steps distilled into one
(sdtt.py), and distribution matching after DiDi-Instruct (didi.py)."""
