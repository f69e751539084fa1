from edgemed.errors import InputError
def read_image(path):
    raise InputError("not yet", path=path)
