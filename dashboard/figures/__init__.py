"""Plotly figure builders of the dashboard; pages only place them (the planner draws nothing)."""
