"""The work of the SSLSegmentation module, free of GUI where possible (see the module file for the widget shell).

``nodeBridge``: MRML nodes <-> engine arrays and files (volumes, segmentations, safe segmentation loading).
"""
