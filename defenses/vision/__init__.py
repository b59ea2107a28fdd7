"""Image defenses: adversarial training (Madry, TRADES), mixup, CausalAdv-M/-T, CiiV (and CiiV +
mixup) and Gaussian randomized smoothing."""
