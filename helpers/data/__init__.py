"""Faces in: photos read safely, folders of people, faces found and aligned, batches for a backbone.

folders (the packaged ORL faces, a learner's folder), splits (known people and strangers; train,
validation and test photos), images (one file read safely),
streaming (photos decoded when needed, for `train.trainer`), facecrop (OpenCV's Haar cascade),
alignment (dlib landmarks -> a canonical crop), preprocess (photos -> a normalised batch),
degrade (phone-like damage), background (the people a whitening learns from).
Nothing here knows about models.
"""
