"""Results as people read them: tables, pictures (PNG) and pages (HTML). Formats what analyses
return; imports no analysis."""
from .common import pyplot, token_strings
from .html import write_depth_html
from .lens import COLUMNS, format_table, plot_layer_curves, plot_lens_grid
from .probe import format_probe_table, plot_probe_r2, write_probe_outputs
from .tuned import format_tuned_table, plot_tuned_eval, write_tuned_report

__all__ = ["COLUMNS", "format_probe_table", "format_table", "format_tuned_table", "plot_layer_curves",
           "plot_lens_grid", "plot_probe_r2", "plot_tuned_eval", "pyplot", "token_strings", "write_depth_html",
           "write_probe_outputs", "write_tuned_report"]
