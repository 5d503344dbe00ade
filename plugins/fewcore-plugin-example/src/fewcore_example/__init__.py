"""An example fewcore plugin: the ``flat-linear`` backbone and the ``nearest-neighbour`` learner."""
