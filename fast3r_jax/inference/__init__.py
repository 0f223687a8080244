"""Running the model: the many-view `Engine`, its several-device `ShardedEngine`, and the `predict` facade."""
