"""edgetwin"""
