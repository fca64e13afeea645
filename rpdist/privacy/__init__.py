"""What a release reveals: sound advantage bounds (bounds, per_input), release mechanisms, the
distinguishing audit (audit, distinguish) and Robust Attribute Privacy (rap, runner).

Import the submodule you need; this package imports nothing eagerly, so the engine can use the
bounds without loading the analyses built on it.
"""
