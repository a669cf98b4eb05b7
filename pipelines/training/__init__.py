"""Face recipe training: dataset report, reference choice, (later) cache, train loop, checkpoints, export.

Light on purpose: importing this package pulls in numpy and OpenCV at most; torch is imported by the modules
that train, inside their functions.
"""
