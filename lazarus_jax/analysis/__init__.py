"""Reading the model: the logit lens, probes, generation and answer accuracy, interventions, the tuned lens,
what V/O learned, the compute-or-copy analysis and the statistics every figure is reported with."""
