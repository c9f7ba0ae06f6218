"""The work of the SSLPretrain module; the module file ``SSLPretrain.py`` is only the shell. Map:

- ``pretrainLogic``: ``SSLPretrainLogic`` - scene volumes or a folder -> ``sslseg pretrain`` in a background process
  -> a registered backbone; the equivalent server command (no GUI);
- ``parameters``: the parameter node's fields;
- ``widget``: the panel (Qt; inside Slicer only).

Shared parts come from the neutral library ``SSLCommonLib``: ``jobs`` (background jobs, work folders),
``nodeBridge``, ``progressChart``, ``installLogic``, ``parameterFields``, ``settings``, ``panelBase``. Nothing is
imported from the SSLSegmentation module.
"""
