"""Records -> tables and figures: run records, cost records and benchmark rows to the paper's
tables and figures, ours beside the paper's.

* :mod:`.tables`: Tables 2-8 in the paper's layout (Markdown, CSV, LaTeX), the transfer table,
  the gradient-fidelity CSVs; loading run / cost records (numbers checked);
* :mod:`.figures`: every figure (Figures 3-5, the transfer and gradient-fidelity figures);
* :mod:`.cost_tables`: ``results/cost/`` (the paper's cost columns, measured);
* :mod:`.latency_tables`: ``results/latency/`` (Table 8 benchmark, ablation, projection, end to
  end);
* :mod:`.render`: the Jinja2 templates under ``templates/``, the one Markdown table writer, CSV
  rows, the number check; :mod:`.plotting`: shared matplotlib helpers (labelled log axes,
  atomic saving). Every file is written aside and renamed (:mod:`lbp_wht.io`).

The investigations that read these files (the cost-accounting hypotheses, the verdicts of the
CPU demo, the transfer run and the gradient-fidelity reading, and the reports that state them)
are scripts in ``analysis/``, not part of the package.

pandas, matplotlib and jinja2 are the optional extra ``lbp_wht[reporting]``; importing this
package alone needs none of them.
"""
