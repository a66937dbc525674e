"""The on-disk layouts the dataset readers expect, as the downloads unpack (../shared/FORMATS.md).

Shown by `mmsocial data <reader> --help` and named in the readers' errors; kept free of heavy
imports so the command line starts fast.
"""

NUSWIDE_LAYOUT = """\
ROOT/                                    the NUS-WIDE archives unpacked side by side
  ImageList/Imagelist.txt                <concept>\\<nnnn>_<photo id>.jpg a line     (ImageList.zip)
  ImageList/TrainImagelist.txt           official train split, same line format   (ImageList.zip)
  ImageList/TestImagelist.txt            official test split, same line format    (ImageList.zip)
  Groundtruth/AllLabels/Labels_<c>.txt   one 0/1 a line, 81 concepts              (Groundtruth.zip)
  NUS_WID_Tags/All_Tags.txt              <photo id> <tag> <tag> ... a line        (NUS_WID_Tags.zip)
  NUS_WID_Tags/AllTags1k.txt             1,000 0/1 columns a line                 (NUS_WID_Tags.zip)
  NUS_WID_Tags/TagList1k.txt             the 1,000 tags, one a line               (NUS_WID_Tags.zip)
  Flickr/<concept>/<nnnn>_<photo id>.jpg the images you have (optional)           (Flickr, via NUS-WIDE-urls.txt)
Tags come from All_Tags.txt, or from AllTags1k.txt + TagList1k.txt (one of the two is needed).
"""

MIRFLICKR_LAYOUT = """\
PARENT/                                  the two archives unpacked side by side
  mirflickr/                             ROOT (or name PARENT)                     (mirflickr25k.zip)
    im<N>.jpg                            N = 1..25000
    meta/tags/tags<N>.txt                one processed tag a line (may be empty)
    meta/license/license<N>.txt          licence and photo page URL (owner = user; optional)
  mirflickr25k_annotations_v080/         sibling of mirflickr/    (mirflickr25k_annotations_v080.zip)
    <concept>.txt                        image numbers, one a line (24 "potential" concepts)
    <concept>_r1.txt                     image numbers, one a line (14 "relevant" concepts)
    README.txt                           skipped
"""

VOC2007_LAYOUT = """\
PARENT/
  VOCdevkit/VOC2007/                     ROOT (or name PARENT)    (VOCtrainval_06-Nov-2007.tar + VOCtest_06-Nov-2007.tar)
    Annotations/<id>.xml                 objects -> labels, owner -> user
    JPEGImages/<id>.jpg                  the images
    ImageSets/Main/{train,val,trainval,test}.txt   the official split
  <any folder>/                          the Flickr tags of Guillaumin, Verbeek & Schmid (CVPR 2010), from LEAR/INRIA
    pascal07_dictionary.txt              one tag word a line (804)
    pascal07_train_list.txt              image ids of VOC2007 trainval, the row order of the train matrix
    pascal07_test_list.txt               image ids of VOC2007 test, the row order of the test matrix
    pascal07_train_tags.hvecs            per row: little-endian uint16 d, then d uint16 0/1 values
    pascal07_test_tags.hvecs             (or the dense text form pascal07_{train,test}_tags.txt)
The tag folder is looked for in PARENT, ROOT and their sub-folders, or named with tags_dir (--tags).
"""
