"""Results as people read them: tables, pictures (PNG) and pages (HTML). Formats what analyses
return; imports no analysis."""
from .common import pyplot, token_strings
from .html import write_depth_html
from .lens import COLUMNS, format_table, layer_curves_view, lens_view, plot_layer_curves, plot_lens_grid
from .page import REPORT, Viewable, Vocab, array, page_html, write_page
from .probe import format_probe_table, plot_probe_r2, write_probe_outputs
from .tuned import format_tuned_table, plot_tuned_eval, write_tuned_report

__all__ = ["COLUMNS", "REPORT", "Viewable", "Vocab", "array", "format_probe_table", "format_table", "format_tuned_table",
           "layer_curves_view", "lens_view", "page_html", "plot_layer_curves", "write_page",
           "plot_lens_grid", "plot_probe_r2", "plot_tuned_eval", "pyplot", "token_strings", "write_depth_html",
           "write_probe_outputs", "write_tuned_report"]
