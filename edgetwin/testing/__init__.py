"""edgetwin for your own tests, notebooks and scripts: a private broker, a message capture, a
simulated fleet, agents on emulated chips and a gateway, each started from code.

The pytest plugin (`edgetwin.testing.pytest_plugin`, loaded by pytest through the `pytest11`
entry point) returns these same objects from its fixtures; README's "Testing your own code
against edgetwin" shows both ways.
"""
