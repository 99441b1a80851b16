"""mlmlmlm: EMG-to-viola translation."""
