"""The work of the SSLPretrain module, free of GUI where possible (see the module file for the widget shell).

``pretrainLogic``: the run (scene volumes or a folder -> ``sslseg pretrain`` in a background process -> a registered
backbone); ``parameters``: the parameter node; ``widget``: the panel. Shared parts (process runner, node bridge,
progress chart, install logic) come from ``SSLSegmentationLib``.
"""
