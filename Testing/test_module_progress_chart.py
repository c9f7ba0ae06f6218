"""The live training chart (SSLCommonLib.progressChart) on real MRML plot and table nodes."""

import math

from SSLCommonLib.progressChart import ProgressChart


def _nodeIDs(scene):
    # the scene's subject hierarchy node is created on first use; it belongs to every scene
    nodes = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    return {node.GetID() for node in nodes if not node.IsA("vtkMRMLSubjectHierarchyNode")}


def test_chart_nodes_follow_progress_events(slicer_scene):
    import slicer

    before = _nodeIDs(slicer_scene)
    chart = ProgressChart(slicer_scene, "Fine-tuning")
    chartNode = chart.chartNode
    assert chartNode.IsA("vtkMRMLPlotChartNode") and chartNode.GetTitle() == "Fine-tuning"
    assert chartNode.GetNumberOfPlotSeriesNodes() == 2
    series = [chartNode.GetNthPlotSeriesNode(i) for i in range(2)]
    assert {s.GetName() for s in series} == {"Training loss", "Validation Dice"}
    for seriesNode in series:
        table = seriesNode.GetTableNode()
        assert table is not None and table.IsA("vtkMRMLTableNode")
        assert (seriesNode.GetXColumnName(), seriesNode.GetYColumnName()) == ("x", "y")
        assert seriesNode.GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter

    events = [
        {"event": "start", "total_steps": 3},
        {"event": "progress", "phase": "decoder_warmup", "step": 1, "loss": 1.5, "val_dice": None},
        {"event": "progress", "phase": "poly", "step": 2, "loss": 1.1, "val_dice": None},
        {"event": "validation", "step": 2, "dice": {"A": 0.5, "B": 0.3}, "mean_dice": 0.4},
        {"event": "progress", "phase": "poly", "step": 3, "loss": None},  # NaN loss arrives as null: skipped
        {"event": "log", "message": "hello"},
    ]
    added = [chart.addEvent(event) for event in events]
    assert added == [False, True, True, True, False, False]
    assert chart.values("loss") == [(1.0, 1.5), (2.0, 1.1)]
    assert chart.values("dice") == [(2.0, 0.4)]
    lossTable = chart.tableNodes["loss"]
    assert lossTable.GetNumberOfRows() == 2
    assert math.isclose(float(slicer.util.arrayFromTableColumn(lossTable, "y")[1]), 1.1)

    chart.clear()
    assert chart.values("loss") == [] and chart.values("dice") == []
    chart.removeNodes()
    left = [slicer_scene.GetNodeByID(i) for i in _nodeIDs(slicer_scene) - before]
    assert [n.GetClassName() for n in left] == []


def test_generic_curves_for_pretraining(slicer_scene):
    chart = ProgressChart(slicer_scene, "Pretraining", curves=[("loss", "Pretext loss", "progress", "loss",
                                                                (1, 0, 0))])
    chart.addEvent({"event": "progress", "phase": "pretrain", "step": 5, "loss": 0.25})
    assert chart.chartNode.GetNumberOfPlotSeriesNodes() == 1
    assert chart.values("loss") == [(5.0, 0.25)]
