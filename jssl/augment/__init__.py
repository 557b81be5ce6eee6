"""Views and pretext inputs made on the accelerator, inside the jitted step."""
