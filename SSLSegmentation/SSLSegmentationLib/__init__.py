"""The work of the SSLSegmentation module; the module file ``SSLSegmentation.py`` is only the shell. Map:

Logic (no GUI; the console and the panel call the same code):

- ``segmentationLogic``: ``SSLSegmentationLogic`` - fine-tune on scene pairs, segment volumes, backbones;
- ``trainingData``: training pairs -> an nnU-Net dataset folder for the engine (checks first);
- ``resultNodes``: results in the scene: the uncertainty volume over the input, the Segment Editor hand-off;
- ``ranking``: which case next: candidates ranked by uncertainty (``sslseg rank``), the chosen one loaded;
- ``modelStore``: the models folder (add, list, rename, delete, export/import ``.sslmodel`` files).

Panel (Qt; inside Slicer only): ``widget`` and ``parameters`` (the parameter node's fields).

What SSLSegmentation and SSLPretrain share (jobs, process runner, node bridge, install logic, settings, parameter
fields, progress chart, panel base) is the neutral library ``SSLCommonLib`` (folder ``SSLCommon/``).
"""
