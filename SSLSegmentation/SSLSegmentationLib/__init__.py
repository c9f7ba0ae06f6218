"""The work of the SSLSegmentation module; the module file ``SSLSegmentation.py`` is only the shell. Map:

Logic (no GUI; the console and the panel call the same code):

- ``segmentationLogic``: ``SSLSegmentationLogic`` - fine-tune on scene pairs, segment volumes, backbones;
- ``trainingData``: training pairs -> an nnU-Net dataset folder for the engine (checks first);
- ``nodeBridge``: MRML nodes <-> engine arrays and files (volumes, segmentations with terminology, geometry in
  LPS; writing a result into an existing segmentation);
- ``resultNodes``: results in the scene: the uncertainty volume over the input, the Segment Editor hand-off;
- ``ranking``: which case next: candidates ranked by uncertainty (``sslseg rank``), the chosen one loaded;
- ``modelStore``: the models folder (add, list, rename, delete, export/import ``.sslmodel`` files);
- ``settings``: the extension's Slicer settings (engine home, models folder, device).

Shared with SSLPretrain (neutral names, no module-specific code):

- ``jobs``: ``Job`` / ``JobOwner`` (one background engine command at a time) and the work folders;
- ``processRunner``: a child process read without blocking, its JSON progress events, Cancel of its process tree;
- ``installLogic``: the Python packages at first use (torch through the PyTorch extension);
- ``parameterFields``: Slicer's ``@parameterNodeWrapper`` and validators, with a plain-Python stand-in outside Slicer;
- ``progressChart``: a live training chart from MRML plot nodes;
- ``panelBase``: what both panels share (Qt; inside Slicer only).

Panel (Qt; inside Slicer only): ``widget`` and ``parameters`` (the parameter node's fields).
"""
