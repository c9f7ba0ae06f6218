"""Slicer code that the SSLSegmentation and SSLPretrain modules share. It names neither module: a logic passes its
own name (``JobOwner.moduleName``), which prefixes its work folders and log lines. Both modules import from here;
nothing here imports from them. Map:

- ``jobs``: ``Job`` / ``JobOwner`` (one background engine command at a time, given the module's name) and the
  work folders;
- ``processRunner``: a child process read without blocking, its JSON progress events, ending its process tree
  (Cancel, scene close, module exit, application quit);
- ``nodeBridge``: MRML nodes <-> engine arrays and files (volumes, segmentations with terminology, geometry in
  LPS; writing a result into an existing segmentation);
- ``installLogic``: the Python packages at first use (torch through the PyTorch extension);
- ``settings``: the extension's Slicer settings (engine home, models folder, device);
- ``parameterFields``: Slicer's ``@parameterNodeWrapper`` and validators, with a plain-Python stand-in outside Slicer;
- ``progressChart``: a live training chart from MRML plot nodes;
- ``panelBase``: what both panels share: the parameter node's life cycle, the device note, the run's end on scene
  close or module exit (Qt; inside Slicer only).

Packaged by ``SSLCommon/CMakeLists.txt`` into the extension's qt-scripted-modules folder (on ``sys.path`` in
Slicer) as a library, not a module: Slicer lists no "SSLCommon" module.
"""
