"""Tables, figures and reports from run records, cost records and benchmark rows.

* :mod:`.tables`: Tables 2-8 in the paper's layout (ours beside the paper's);
* :mod:`.figures`: Figures 3-5;
* :mod:`.cost_tables`: ``results/cost/`` (the paper's cost columns, measured);
* :mod:`.cost_agreement`: ``results/cost/agreement.csv`` (every printed cost cell, its
  best-matching variant and the explanation of the cells that stay off) and its figure;
* :mod:`.latency_tables`: ``results/latency/`` (Table 8 benchmark, ablation, projection, end to
  end);
* :mod:`.mini`: the CPU mini-reproduction's report (``make demo``);
* :mod:`.render`: the Markdown helpers and the Jinja2 templates under ``templates/``;
  :mod:`.plotting`: shared matplotlib helpers (labelled log axes).

pandas, matplotlib and jinja2 are the optional extra ``lbp_wht[reporting]``; importing this
package alone needs none of them.
"""
