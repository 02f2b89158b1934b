"""The lexicon of the rule-based labeler (:mod:`cxr_vlp.text.labeler`): what counts as a mention of each
CheXpert observation, and the cue phrases that make a mention negative or uncertain.

Every entry is a regular-expression fragment, matched case-insensitively between word boundaries; the
labeler combines the fragments of one list into one pattern and the longest match at a position wins, so
the order inside a list does not matter.

* :data:`MENTIONS` / :data:`EXCLUSIONS`: phrases of each observation, and phrases that cancel an overlapping
  match ("pericardial effusion" is not a pleural effusion).
* :data:`ATTRIBUTE_MENTIONS`: structures ("heart size", "mediastinal contours") that mention Cardiomegaly or
  Enlarged Cardiomediastinum only together with a qualifier (:data:`ABNORMAL_QUALIFIERS`,
  :data:`NORMAL_QUALIFIER`).
* :data:`OTHER_FINDINGS`: abnormalities outside the 13 pathology labels (emphysema, hiatal hernia, granuloma,
  degenerative spine, ...): a positive or uncertain one keeps No Finding from being 1.
* Cues: :data:`PRE_NEGATION`, :data:`POST_NEGATION`, :data:`PRE_UNCERTAINTY`, :data:`POST_UNCERTAINTY`, and
  :data:`PSEUDO_NEGATION` (phrases with a negation word that negate nothing).
* Scope words: :data:`CLAUSE_STARTERS` / :data:`SOFT_STARTERS` after a comma end a cue's scope.
* :data:`HIERARCHY`: CheXpert's parent labels and their children.

The conventions these lists encode are in docs/labeler.md.
"""

from __future__ import annotations

__all__ = [
    "ABNORMAL_QUALIFIERS",
    "ATTRIBUTE_EXCLUSIONS",
    "ATTRIBUTE_MENTIONS",
    "CARDIOMEDIASTINAL_PHRASES",
    "CLAUSE_STARTERS",
    "EXCLUSIONS",
    "HEART_PHRASES",
    "HIERARCHY",
    "MEDIASTINUM_PHRASES",
    "MENTIONS",
    "LIST_ITEMS",
    "NORMAL_ONLY_MENTIONS",
    "NORMAL_QUALIFIER",
    "OTHER_FINDINGS",
    "OTHER_FINDINGS_EXCLUSIONS",
    "POST_NEGATION",
    "POST_UNCERTAINTY",
    "PRE_NEGATION",
    "PRE_UNCERTAINTY",
    "PSEUDO_NEGATION",
    "SIDE",
    "SOFT_STARTERS",
]

SIDE = r"(?:(?:left|right|bilateral|both|posterior|lateral|l|r)\s+)*"

# --------------------------------------------------------------------------- mention phrases
# Regex fragments (matched case-insensitively, wrapped in word boundaries). Longer phrases first is not
# needed: all fragments of a label are combined and the longest match at a position wins.
MENTIONS: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": (
        r"(?:cardio)?mediastinal\s+(?:widening|enlargement)",
        r"enlarged\s+cardiomediastinum",
        r"widened\s+(?:superior\s+)?mediastinum",
    ),
    "Cardiomegaly": (
        r"cardiomegaly",
        r"cardiac\s+enlargement",
        r"enlarged\s+heart",
        r"enlargement\s+of\s+the\s+heart",
    ),
    "Lung Opacity": (
        r"opacit(?:y|ies)",
        r"opacification",
        r"opacified",
        r"haziness",
        r"hazy",
        r"infiltrat(?:e|es|ion|ive)",
        r"air[- ]?space\s+(?:disease|process)",
        r"ground[- ]glass",
        r"scar(?:s|ring|red)?",
        r"fibro(?:sis|tic)(?:\s+changes?)?",
        r"interstitial\s+(?:markings?|prominence|changes?|pattern|thickening|lung\s+disease|disease|fibrosis)",
        r"(?:increased|increase\s+in|prominent|prominence\s+of|coarse(?:ned)?|accentuated)\s+(?:the\s+)?(?:\w+\s+){0,2}"
        r"(?:lung|interstitial|perihilar|pulmonary)\s+markings",
        r"reticula(?:r|tion)(?:\s+(?:opacities|markings|pattern))?",
        r"(?:peri)?bronchial\s+(?:wall\s+)?thickening",
    ),
    "Lung Lesion": (
        r"nodules?",
        r"nodular(?:ity)?",
        r"mass(?:es)?",
        r"lesions?",
        r"tumou?rs?",
        r"neoplasms?",
        r"carcinoma",
        r"metastas(?:is|es)",
        r"metastatic\s+disease",
        r"nodular\s+densit(?:y|ies)",
    ),
    "Edema": (
        r"(?:pulmonary\s+|interstitial\s+|alveolar\s+)?edema",
        r"kerley\s+b\s+lines",
        r"(?:fluid|volume)\s+overload",
        r"(?:congestive\s+)?heart\s+failure",
        r"chf",
    ),
    "Consolidation": (
        r"consolidations?",
        r"consolidative",
        r"consolidated",
    ),
    "Pneumonia": (
        r"pneumonias?",
        r"bronchopneumonia",
        r"pneumonic",
        r"infections?",
        r"infectious(?:\s+process)?",
        r"aspiration(?:\s+pneumonia)?",
    ),
    "Atelectasis": (
        r"atelectas[ie]s",
        r"atelectatic",
        r"(?:lobar|lobe|segmental|lung)\s+collapse",
        r"collapse\s+of\s+the",
        r"collapsed\s+(?:\w+\s+)?lobe",
    ),
    "Pneumothorax": (
        r"pneumothora(?:x|ces|xes)",
        r"hydropneumothorax",
        r"ptx",
        r"pleural\s+air(?:\s+collections?)?",
    ),
    "Pleural Effusion": (
        r"(?:pleural\s+)?effusions?",
        r"pleural\s+fluid",
        r"fluid\s+in\s+the\s+(?:\w+\s+)?pleural\s+spaces?",
        r"(?:layering|fissural)\s+fluid",
        r"hydrothorax",
        r"hemothorax",
        r"hydropneumothorax",
        rf"blunt(?:ing|ed|s)?\s+(?:of\s+)?(?:the\s+)?{SIDE}costophrenic\s+(?:angles?|sulc(?:us|i)|recess(?:es)?|xxxx)",
        r"costophrenic\s+(?:angles?\s+|xxxx\s+)?(?:(?:is|are)\s+)?blunt(?:ing|ed)",
    ),
    "Pleural Other": (
        r"pleural\s+thickening",
        r"pleural\s+plaques?",
        r"(?:calcified\s+)?plaques?",
        r"pleural\s+calcifications?",
        r"pleural\s+scar(?:ring)?",
        r"pleural[- ]parenchymal\s+scarring",
        r"(?:apical\s+)?pleural\s+caps?",
        r"pleural\s+fibrosis",
        r"pleuro[- ]?parenchymal\s+(?:scar(?:ring)?|irregularit(?:y|ies))",
        r"pleural\s+mass(?:es)?",
        r"fibrothorax",
    ),
    "Fracture": (
        r"fractures?",
        r"fractured",
        r"fx",
        r"post-?traumatic\s+(?:changes?|deformit(?:y|ies))\s+(?:of|in)\s+(?:the\s+)?(?:\w+\s+){0,3}ribs?",
    ),
    "Support Devices": (
        r"tubes?",
        r"catheters?",
        r"picc",
        r"pacemakers?",
        r"pacers?",
        r"a?icds?",
        r"defibrillators?",
        r"wires?",
        r"clips?",
        r"stents?",
        r"ports?",
        r"port-a-cath",
        r"portacath",
        r"drains?",
        r"devices?",
        r"hardware",
        r"cannulae?",
        r"swan[- ]ganz",
        r"lvad",
        r"ecmo",
        r"iabp",
        r"impella",
        r"intra-?aortic\s+balloon(?:\s+pump)?",
        r"tracheostomy",
        r"coils?",
        r"electrodes?",
        r"tubing",
        r"shunts?",
        r"(?:neuro|(?:vagal\s+)?nerve\s+|spinal\s+cord\s+)?stimulators?",
        r"(?:ekg|ecg|(?:cardiac\s+)?monitor(?:ing)?)\s+leads?",
        r"(?:prosthetic|mechanical|bioprosthetic|artificial|porcine)\s+(?:\w+\s+)?valves?",
        r"valve\s+(?:replacement|prosthesis)",
        r"(?:pacer|pacing|pacemaker|a?icd|defibrillator|transvenous|epicardial)\s+leads?",
        r"(?:central(?:\s+venous)?|picc|arterial|venous|ij|internal\s+jugular|jugular|subclavian|femoral"
        r"|dialysis|hickman|midline|pa|pulmonary\s+artery)\s+lines?",
        r"lines?\s+and\s+tubes?",
        r"lines?(?=\s+(?:tip|terminates?|ends?|courses?|projects?)\b)",
        r"(?:chest|subclavian|jugular)\s+xxxx(?=(?:\s+[\w-]+){0,5}\s+tip\b)",
        r"xxxx-a-xxxx",
        r"(?:septal\s+)?occluder",
        r"(?:electronic|cardiac|implanted)\s+devices?",
    ),
}

# Matches that are not a mention of that observation (a mention overlapping one of these is dropped).
EXCLUSIONS: dict[str, tuple[str, ...]] = {
    "Pleural Effusion": (r"(?:pericardial|joint)\s+effusions?",),
    "Lung Lesion": (
        r"mass\s+effect",
        r"(?:osseous|bony|bone|lytic|sclerotic|blastic|skin|cutaneous|breast|soft[- ]tissue)"
        r"\s+(?:lesions?|mass(?:es)?)",
        r"body\s+mass",
        r"(?:osseous|bony|bone|lytic|destructive|expansile|sclerotic|blastic|lucent)(?:\s+or\s+\w+)?\s+lesions?",
        r"(?:lesions?|mass(?:es)?)\s+(?:of|in|within|involving)\s+the\s+(?:\w+\s+){0,4}"
        r"(?:ribs?|humer\w*|spine|vertebra\w*|clavicles?|scapulae?|sternum|bones?)",
        r"(?:anterior\s+|posterior\s+|superior\s+)?(?:mediastinal|pericardial|pleural|paratracheal|neck|abdominal)"
        r"\s+mass(?:es)?",
    ),
    "Lung Opacity": (
        r"pleural\s+(?:scar(?:ring)?|fibrosis)",
        r"pleuro[- ]?parenchymal\s+(?:scar(?:ring)?|irregularit(?:y|ies))",
        r"pleural[- ]parenchymal\s+scar(?:ring)?",
        r"(?:anterior\s+)?mediastinal\s+opacit(?:y|ies)",
    ),
    "Edema": (r"(?:soft[- ]tissue|subcutaneous|chest\s+wall|scalp|facial|extremity)\s+edema",),
    "Pleural Other": (r"(?:atherosclerotic|aortic|vascular)\s+(?:\w+\s+)?plaques?",),
    "Support Devices": (r"kerley\s+b\s+lines", r"pleural\s+lines?", r"(?:bronchial|eustachian)\s+tubes?"),
    "Pneumonia": (r"aspiration\s+(?:precautions|risk)",),
}

HEART_PHRASES = (
    r"heart(?:\s+(?:size|silhouette))?",
    r"size\s+of\s+the\s+heart",
    r"cardiac\s+(?:silhouette|size|contours?|shadow)",
    r"cardiac\s+and\s+mediastinal\s+(?:silhouettes?|contours?)",
)
# The whole cardiomediastinal silhouette: a normal one says the heart is normal too, an enlarged one does not
# say which part is enlarged (it mentions Enlarged Cardiomediastinum only).
CARDIOMEDIASTINAL_PHRASES = (
    r"cardio[- ]?mediastinal\s+(?:silhouettes?|contours?|structures)",
    r"cardio[- ]?pulmonary\s+silhouette",
)
MEDIASTINUM_PHRASES = (
    r"(?:cardio[- ]?)?mediastinal\s+(?:and\s+hilar\s+)?(?:contours?|silhouettes?|width|shadow|structures|size)",
    r"cardiac\s+and\s+mediastinal\s+(?:silhouettes?|contours?)",
    r"cardio[- ]?pulmonary\s+silhouette",
    r"(?:hilar\s+and\s+)?mediastinal\s+contours?",
    r"(?:superior\s+)?mediastinum",
    r"cardiomediastinum",
)
ABNORMAL_QUALIFIERS = {
    "Cardiomegaly": r"enlarged|enlargement|large|increased|dilated|prominent|prominence|globular",
    "Enlarged Cardiomediastinum": r"widened|widening|wide|enlarged|enlargement|increased|prominent|prominence",
}
NORMAL_QUALIFIER = (
    r"not\s+(?:\w+ly\s+)?(?:enlarged|widened|increased|large|wide)|no\s+longer\s+(?:enlarged|widened)"
    r"|within\s+(?:the\s+)?(?:normal\s+limits|limits\s+of\s+normal)|wnl|normal(?:[- ]sized?)?|unremarkable|small"
    r"|maintained"
)
# Attribute mentions: label -> (phrase fragments, abnormal qualifier); see the module docstring.
ATTRIBUTE_MENTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "Cardiomegaly": (HEART_PHRASES, ABNORMAL_QUALIFIERS["Cardiomegaly"]),
    "Enlarged Cardiomediastinum": (MEDIASTINUM_PHRASES, ABNORMAL_QUALIFIERS["Enlarged Cardiomediastinum"]),
}
# Attribute phrases that only count with a normal qualifier: label -> phrase fragments.
NORMAL_ONLY_MENTIONS: dict[str, tuple[str, ...]] = {"Cardiomegaly": CARDIOMEDIASTINAL_PHRASES}
ATTRIBUTE_EXCLUSIONS = r"heart\s+(?:borders?|failure|disease|valves?|rate)|(?:open|congestive)\s+heart"
# Structures that may stand in a list with the heart / mediastinum before one shared qualifier
# ("the heart, pulmonary XXXX and mediastinum are within normal limits"); XXXX is the anonymisation token.
LIST_ITEMS = (
    r"pulmonary\s+(?:vascularity|vasculature|vessels|vascular\s+engorgement|xxxx)",
    r"(?:pulmonary\s+)?(?:vasculature|vascularity)",
    r"(?:visuali[sz]ed\s+)?upper\s+abdomen",
    r"hil(?:a|um|ar\s+contours?|ar\s+structures)",
    r"lungs?(?:\s+xxxx)?",
    r"pleura",
    r"(?:bony|osseous|skeletal)\s+structures",
    r"xxxx",
)

# --------------------------------------------------------------------------- cues
PRE_NEGATION: tuple[str, ...] = (
    r"no",
    r"not",
    r"without",
    r"negative\s+for",
    r"free\s+of",
    r"clear\s+of",
    r"absence\s+of",
    r"(?:resolution|clearing)\s+of",
    r"resolved",
    r"removal\s+of",
    r"neither",
    r"nor",
    r"(?:does|do|did)\s+not\s+(?:(?:appear|seem)\s+to\s+(?:be|represent|have)|demonstrate|show|reveal)",
    r"rather\s+than",
    r"instead\s+of",
)
POST_NEGATION: tuple[str, ...] = (
    r"(?:not|no\s+longer)\s+(?:\w+ly\s+|well[- ]?)?(?:be\s+)?"
    r"(?:seen|identified|present|visuali[sz]ed|appreciated|evident"
    r"|demonstrated|noted|detected|apparent|observed|appreciable|visible|shown|re-?demonstrated)",
    r"(?:has|have|had)?\s*(?:completely\s+|nearly\s+)?(?:resolved|cleared)",
    r"(?:is|are|was|were|has\s+been|have\s+been)\s+(?:\w+ly\s+)?(?:removed|absent|excluded|ruled\s+out)",
    r"(?:removal|removed)",
    r"(?:is|are|was|were)\s+(?:now\s+)?gone",
)
PRE_UNCERTAINTY: tuple[str, ...] = (
    r"possible",
    r"possibly",
    r"probable",
    r"probably",
    r"(?:un|most\s+|more\s+|less\s+)?likely",
    r"may",
    r"might",
    r"could",
    r"can\s+be",
    r"questionabl[ey]",
    r"question(?:\s+of)?",
    r"suspicious(?:\s+for)?",
    r"suspected",
    r"suspect",
    r"suspicion\s+(?:of|for)",
    r"suggest(?:s|ed|ing|ive|ion)?(?:\s+of)?",
    r"concern(?:ing)?\s+for",
    r"worrisome\s+for",
    r"(?:cannot|can\s*not|can't)\s+(?:be\s+)?(?:entirely\s+|completely\s+)?(?:exclude[ds]?|ruled?\s+out)",
    r"(?:not|difficult\s+to)\s+(?:be\s+)?(?:entirely\s+|completely\s+)?(?:excluded?|ruled\s+out)",
    r"(?:to\s+)?rule\s+out",
    r"r/o",
    r"(?:evaluate|evaluation|assess|assessment)\s+for",
    r"versus",
    r"vs\.?",
    r"differential(?:\s+diagnosis)?(?:\s+(?:includes?|of|would\s+include))?",
    r"equivocal",
    r"indeterminate",
    r"borderline",
    r"presum(?:ed|ably|ptive)",
    r"potential(?:ly)?",
    r"perhaps",
    r"consider(?:ed|ation)?",
    r"cannot\s+be\s+distinguished",
    r"raising\s+the\s+possibility\s+of",
    r"(?:clinical(?:ly)?\s+)?correlat(?:e|ion)\s+(?:clinically\s+)?(?:for|with)",
    r"represent(?:s|ing)?",  # only counted when it follows a hedge (the labeler's _HEDGED_REPRESENT)
    r"most\s+xxxx",  # anonymisation removed the hedge: "most XXXX represents atelectasis"
    # "opacity in the right middle lobe, XXXX atelectasis", not a list of adjectives ("mild, XXXX opacity")
    r"(?<=,\s)(?<!mild,\s)(?<!minimal,\s)(?<!moderate,\s)(?<!severe,\s)(?<!small,\s)(?<!large,\s)xxxx",
)
POST_UNCERTAINTY: tuple[str, ...] = (
    r"(?:cannot|can\s*not|can't)\s+(?:be\s+)?(?:entirely\s+|completely\s+)?(?:excluded|ruled\s+out)",
    r"(?:is|are)?\s*not\s+(?:entirely\s+|completely\s+)?(?:excluded|ruled\s+out)",
    r"(?:(?:is|are|was|were)\s+)?(?:also\s+)?(?:(?:more|less|most)\s+)?"
    r"(?:likely|unlikely|possible|suspected|questioned|"
    r"questionable|uncertain|equivocal|a\s+consideration|considered|not\s+certain)(?=\s*(?:[.,;:?]|$|and\b|but\b))",
    r"(?:may|might|could)\s+(?:also\s+)?(?:be\s+present|exist|be\s+seen)",
    r"versus",
    r"vs\.?",
)  # plus a question mark right after the mention ("pneumonia?")
# Phrases with a negation word that do not negate what follows them.
PSEUDO_NEGATION: tuple[str, ...] = (
    r"(?:no|without)\s+(?:(?:significant|substantial|appreciable|interval|definite|major|other|much|further"
    r"|obvious|marked)\s+)*(?:change|increase|decrease|worsening|improvement|progression|difference|enlargement"
    r"\s+of\s+the\s+(?:known|previously))",
    r"not\s+(?:significantly\s+)?(?:changed|increased|decreased|worsened|improved)",
    r"not\s+only",
    r"(?:has|have|had)?\s*(?:partially|partly|incompletely|not\s+(?:completely|fully|entirely))\s+(?:resolved|cleared)",
    r"no\s+longer\s+(?:intubated)",
    r"gram[- ]negative",
)

# Comma + one of these words starts a new clause (ends the scope of a pre cue).
CLAUSE_STARTERS = (
    r"there|the|a|an|with|which|but|however|although|though|otherwise|status|s/p|consistent|compatible|findings"
    r"|and\s+(?:the|there)"
)
# Comma + a modifier usually starts a new clause too ("no effusion, possible atelectasis", "no pneumothorax,
# small left effusion") unless a list goes on after it: after a size or state word, any later "or" / "nor"
# ("no consolidation, large effusion or pneumothorax"); after a hedge, another comma before the "or"
# ("no consolidation, suspicious opacity, effusion or pneumothorax", but "no effusion, possible atelectasis or
# pneumonia" hedges both).
SOFT_STARTERS = (
    r"stable|unchanged|persistent|persisting|again|redemonstrated|re-demonstrated|interval|increased|increasing"
    r"|decreased|decreasing|improved|improving|worsened|worsening|new|residual|small|moderate|large|mild|mildly"
    r"|minimal|severe|trace|tiny|possible|possibly|probable|probably|likely|may|could|might|questionable"
    r"|suspected|suspicious|concerning"
)

# Abnormalities outside the 13 pathology labels. Classified like any mention (negation and hedges apply); a
# positive or uncertain one keeps No Finding from being 1 (CheXpert's own No Finding phrase list has the same
# role). Postsurgical change, low lung volumes and technical remarks are not findings.
OTHER_FINDINGS: tuple[str, ...] = (
    r"emphysema(?:tous)?(?:\s+(?:changes?|disease))?",
    r"copd",
    r"chronic\s+(?:obstructive|lung|interstitial)\s+(?:\w+\s+)?disease",
    r"hyper-?(?:inflat|expan|aerat|lucen)\w*",
    r"bullae|bullous|blebs?",
    r"(?:hiatal|hiatus|bochdalek|diaphragmatic)?\s*hernias?",
    r"granulom(?:a|as|ata|atous)(?:\s+(?:disease|process|sequela|sequelae))?",
    r"degenerat\w+(?:\s+(?:changes?|disease|disc\s+disease|joint\s+disease))?",
    r"spondylos[ie]s|osteophyt\w+|spurring|arthriti[sc]|arthritic\s+changes?|arthropathy",
    r"(?:levo|dextro)?scoliosis|kyphosis|(?:spine|spinal)\s+curvature",
    r"osteopenia|osteoporo\w+",
    r"calcifi\w+",
    r"atherosclero\w+",
    r"tortu\w+|ectatic|ectasia|unfolded|aneurysm\w*",
    r"(?:dilated|prominent)\s+(?:\w+\s+)?aorta",
    r"(?:(?:hemi-?)?diaphragm\w*\s+elevation|elevat\w+\s+(?:of\s+the\s+)?(?:\w+\s+){0,2}(?:hemi-?)?diaphragms?)",
    r"eventration",
    r"deformit(?:y|ies)",
    r"(?:pulmonary\s+|central\s+)?(?:vascular|venous)\s+(?:congestion|engorgement|prominence|redistribution)",
    r"congestion|cephalization|engorged\s+(?:pulmonary\s+)?(?:vessels|vasculature)",
    r"(?:enlarged|prominent)\s+pulmonary\s+arter(?:y|ies)",
    r"(?:lymph)?adenopathy",
    r"pectus(?:\s+(?:excavatum|carinatum))?",
    r"pneumomediastinum|pneumoperitoneum",
    r"(?:free\s+)?(?:intraperitoneal|subdiaphragmatic)\s+air",
    r"foreign\s+bod(?:y|ies)",
    r"volume\s+loss",
    r"dislocations?|subluxation",
    r"lesions?|geode|myeloma",
    r"(?:mediastinal|pericardial)\s+mass(?:es)?",
    r"(?:cardio)?mediastinal\s+shift",
    r"bronchi(?:tis|tic|olitis)(?:\s+changes?)?",
    r"septal\s+lines",
)
# Matches that are not an other finding.
OTHER_FINDINGS_EXCLUSIONS: tuple[str, ...] = (
    r"non-?calcified",
    r"calcified\s+(?:pleural\s+)?plaques?",
)

# CheXpert's label hierarchy: a positive or uncertain child makes its parent at least as positive.
HIERARCHY: dict[str, tuple[str, ...]] = {
    "Lung Opacity": ("Edema", "Consolidation", "Pneumonia", "Lung Lesion", "Atelectasis"),
    "Enlarged Cardiomediastinum": ("Cardiomegaly",),
}
