"""Privacy attacks that query models only through released labels (model inversion: BREP-MI)."""
