"""The runner: the same executable, called with arguments, drives whole network lists like cnitool."""
