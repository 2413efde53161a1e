"""Deployment calibration: fit a few coefficients to a deployment's own step log.

Why: kernel-level fits transfer across models but not across software stacks (scheduler
overhead, CUDA graphs, driver, clocks). A step log (batch composition + measured duration,
written by the torch engine or any engine) pins those down with a small linear least-squares
fit on top of the fitted model, so sluice becomes a twin of *that* deployment.
"""
