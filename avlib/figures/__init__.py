"""What a person looks at: the figures of a run (plots) and the notebooks' displays (showcase)."""
