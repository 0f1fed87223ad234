"""Models: loading a checkpoint (`loading`), batching and training (`training`), and the tiny
target/retrain models the embedded study trains (`tiny`)."""
