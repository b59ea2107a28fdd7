"""Certified defenses against word substitution: RanMASK, SAFER, IBP and CISS."""
