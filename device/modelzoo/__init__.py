"""Model building without TensorFlow: read upstream weights, write ``.tflite``.

``dlib_format`` reads dlib's ``.dat`` networks, ``tflite_builder`` (with the
numbers in ``tflite_schema``) writes TFLite flatbuffers, ``dlib_resnet`` maps dlib's
face recognition ResNet onto TFLite ops, ``build`` is ``facegate models build``, and
``dlib_runner`` runs the result on one face chip.
"""
