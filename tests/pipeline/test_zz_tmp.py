from tests.videos import make_video

def test_x(tiny_video):
    assert tiny_video.endswith(".mp4")
