"""Using the trained model: a photo in, the class out; the registered, servable bundle that carries its preprocessing
and labels; one champion per dataset; a trained model evaluated on any labelled folder."""
