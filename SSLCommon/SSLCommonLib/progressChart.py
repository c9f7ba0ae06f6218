"""A live training chart in Slicer's plot view, built from MRML nodes only (no Qt): one ``vtkMRMLTableNode`` and one
``vtkMRMLPlotSeriesNode`` per curve, all shown in one ``vtkMRMLPlotChartNode``.

Generic (SSLSegmentation charts loss and validation Dice, SSLPretrain the pretext loss). The widget shows the chart
with ``slicer.modules.plots.logic().ShowChartInLayout(chart.chartNode)``.

Example (Slicer's Python console)::

    chart = ProgressChart(slicer.mrmlScene, "Fine-tuning")
    chart.addEvent({"event": "progress", "step": 10, "loss": 0.8})
    chart.addEvent({"event": "validation", "step": 10, "mean_dice": 0.61})
    slicer.modules.plots.logic().ShowChartInLayout(chart.chartNode)
"""

from __future__ import annotations

import math

# key -> (legend, event name, event field, colour)
DEFAULT_CURVES = (
    ("loss", "Training loss", "progress", "loss", (0.85, 0.33, 0.10)),
    ("dice", "Validation Dice", "validation", "mean_dice", (0.00, 0.45, 0.74)),
)


class ProgressChart:
    """Curves fed from progress events. ``curves``: tuples ``(key, legend, eventName, eventField, rgb)``."""

    def __init__(self, scene, title="Training", curves=DEFAULT_CURVES, xAxisTitle="step", yAxisTitle="value"):
        import slicer
        import vtk

        self.scene = scene
        self.curves = {curve[0]: curve for curve in curves}
        self.tableNodes = {}
        self.seriesNodes = {}
        self.chartNode = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(title + " chart"))
        self.chartNode.SetTitle(title)
        self.chartNode.SetXAxisTitle(xAxisTitle)
        self.chartNode.SetYAxisTitle(yAxisTitle)
        self.chartNode.SetLegendVisibility(True)
        for key, legend, _, _, color in curves:
            tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{title} {legend}"))
            for columnName in ("x", "y"):  # numeric columns (AddColumn() would make string columns)
                array = vtk.vtkDoubleArray()
                array.SetName(columnName)
                tableNode.GetTable().AddColumn(array)
            tableNode.SetColumnTitle("x", xAxisTitle)
            tableNode.SetColumnTitle("y", legend)
            seriesNode = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", scene.GenerateUniqueName(legend))
            seriesNode.SetAndObserveTableNodeID(tableNode.GetID())
            seriesNode.SetXColumnName("x")
            seriesNode.SetYColumnName("y")
            seriesNode.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            seriesNode.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
            seriesNode.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleSolid)
            seriesNode.SetColor(*color)
            self.chartNode.AddAndObservePlotSeriesNodeID(seriesNode.GetID())
            self.tableNodes[key] = tableNode
            self.seriesNodes[key] = seriesNode

    def nodes(self):
        return [self.chartNode, *self.seriesNodes.values(), *self.tableNodes.values()]

    def addPoint(self, key, x, y):
        """Append ``(x, y)`` to curve ``key``; non-finite values (null in JSON) are skipped."""
        if y is None or x is None or not math.isfinite(float(y)):
            return False
        table = self.tableNodes[key].GetTable()
        table.GetColumnByName("x").InsertNextValue(float(x))
        table.GetColumnByName("y").InsertNextValue(float(y))
        table.Modified()
        self.tableNodes[key].Modified()
        return True

    def addEvent(self, event):
        """Route a progress event (``{"event": "progress", "step": 3, "loss": 0.7}``) to the matching curves."""
        added = False
        for key, _, eventName, field, _ in self.curves.values():
            if event.get("event") == eventName and field in event:
                added |= self.addPoint(key, event.get("step"), event.get(field))
        return added

    def values(self, key):
        """``[(x, y), ...]`` of curve ``key``."""
        table = self.tableNodes[key].GetTable()
        xs, ys = table.GetColumnByName("x"), table.GetColumnByName("y")
        return [(xs.GetValue(i), ys.GetValue(i)) for i in range(table.GetNumberOfRows())]

    def clear(self):
        for tableNode in self.tableNodes.values():
            table = tableNode.GetTable()
            for name in ("x", "y"):
                table.GetColumnByName(name).SetNumberOfTuples(0)
            table.Modified()
            tableNode.Modified()

    def removeNodes(self):
        for node in self.nodes():
            if node is not None and node.GetScene() is self.scene:
                self.scene.RemoveNode(node)
