"""Conditional accuracy on the synthetic twin: does an image show the colours its caption names?

The twin's captions state the bird's body and wing colour (``stackgan.data.twin``). A
small CNN predicts both colours from a 64 px image; for generated images the score is
how often the predicted colours equal the colours parsed from the image's caption.

The classifier is an evaluation oracle, trained by the pipeline on the twin's *real*
images of both splits (like the StackGAN Inception Score, whose classifier was fine-
tuned on the test classes), except every ``holdout``-th image, on which its real-image
accuracy is reported. Training only on the 15 training classes of a small twin lets it
memorise classes instead of colours (measured: wing accuracy ~0.4 on unseen classes).

Reported with the chance level of the same predictions: ``sum_c p_caption(c) *
p_predicted(c)`` per attribute -- the expected accuracy if images carried no
information about their captions. Real images score >= 95 %; shuffled image-caption
pairs and random images score at chance.

* :mod:`~stackgan.evaluation.attributes.model`: the CNN, its file, predictions;
* :mod:`~stackgan.evaluation.attributes.score`: caption labels, accuracy with chance levels;
* :mod:`~stackgan.evaluation.attributes.train`: the real training set, augmentation, training
  with held-out images (``stackgan attr-classifier``).
"""
