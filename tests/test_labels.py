from vitrt.labels import imagenet_labels, imagenet_synsets, labels_for


def test_labels_equal_timm():
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    assert len(imagenet_labels()) == 1000
    assert list(imagenet_labels()) == [info.index_to_description(i) for i in range(1000)]
    assert list(imagenet_synsets()) == [info.index_to_label_name(i) for i in range(1000)]
    assert imagenet_labels()[281] == "tabby, tabby cat"


def test_labels_for_other_class_counts():
    assert labels_for("imagenet-1k", 1000)[0] == "tench, Tinca tinca"
    assert labels_for("imagenet-1k", 10) == tuple(f"class_{i}" for i in range(10))
    assert labels_for(None, 3) == ("class_0", "class_1", "class_2")
