"""A deterministic generator of synthetic patient records: the demo corpus of shadowmia.

The demo asks the question membership inference is about: *was this patient's record in
the fine-tuning data?* A model is fine-tuned on some of these records; the attack then
tries to tell those records from others drawn the same way.

Every record is **entirely fictional**. Names are combined at random from lists of common
first names and surnames, and ages, dates, diagnoses, medications, findings, clinicians
and hospitals are all drawn at random; none describes a real person, clinician, hospital
or case. The clinical content is plausible in shape only and is not medical advice.

Each record is one paragraph of clinical prose (40 to 90 words) written from one of
:data:`N_TEMPLATES` templates -- admission notes, discharge summaries, clinic letters,
referrals, follow-up notes and more -- each with several options per clause, plus the
structured fields the text was written from. Generation uses only
``numpy.random.default_rng(seed)``: the same ``n`` and ``seed`` give the same records on
every machine, and no global random state is read or changed. Texts are distinct within
one call, and a prefix of a longer call equals a shorter call with the same seed.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from llm_features.io import atomic_path
from llm_features.validation import check_int

__all__ = [
    "CONDITIONS",
    "FEMALE_FIRST_NAMES",
    "MALE_FIRST_NAMES",
    "MAX_TOKEN_ESTIMATE",
    "MAX_WORDS",
    "MEDICATIONS",
    "MIN_WORDS",
    "N_TEMPLATES",
    "SURNAMES",
    "generate_patient_records",
    "write_patient_corpus",
]

logger = logging.getLogger(__name__)

MIN_WORDS = 40
MAX_WORDS = 90
MIN_AGE = 18
MAX_AGE = 95
_FIRST_DAY = _dt.date(2015, 1, 1)
_LAST_DAY = _dt.date(2025, 12, 31)
_MAX_ATTEMPTS_PER_RECORD = 1000
_MAX_DRUGS = 4
# Byte-level BPE tokenizers that split digits (Llama 3, SmolLM2, Qwen) spend about one
# token per word plus one per digit or punctuation mark; a text whose such count exceeds
# this is redrawn, which keeps records at about 60 to 130 tokens.
MAX_TOKEN_ESTIMATE = 115
_SYMBOL = re.compile(r"[^\sA-Za-z]")

# --------------------------------------------------------------------------- names

FEMALE_FIRST_NAMES: tuple[str, ...] = (
    "Abigail", "Adaeze", "Aisha", "Alejandra", "Alice", "Amara", "Amelia", "Ana", "Anika",
    "Anna", "Aoife", "Astrid", "Aylin", "Beatriz", "Bethany", "Bianca", "Bronwen", "Camila",
    "Carmen", "Caroline", "Chiara", "Chloe", "Chidinma", "Claire", "Dalia", "Daniela",
    "Deborah", "Deepa", "Eleanor", "Elena", "Elif", "Eliza", "Emily", "Emma", "Esther",
    "Fatima", "Fiona", "Freya", "Gabriela", "Grace", "Hana", "Hannah", "Helen", "Ines",
    "Ingrid", "Isabel", "Isla", "Jasmine", "Joanna", "Julia", "Kalinda", "Katarzyna",
    "Keiko", "Khadija", "Laila", "Lakshmi", "Laura", "Leah", "Leila", "Lucia", "Lucy",
    "Magdalena", "Maja", "Margaret", "Maria", "Mariam", "Marta", "Maya", "Mei", "Mercy",
    "Mia", "Naledi", "Nadia", "Naomi", "Niamh", "Nkechi", "Noor", "Olivia", "Patricia",
    "Priya", "Rachel", "Rosa", "Ruth", "Sakura", "Samira", "Sarah", "Sofia", "Sunita",
    "Tamar", "Valentina", "Wanjiru", "Xiu", "Yasmin", "Yuki", "Zainab", "Zofia",
)

MALE_FIRST_NAMES: tuple[str, ...] = (
    "Aaron", "Abdullah", "Adebayo", "Ahmed", "Alejandro", "Alexander", "Ali", "Andrei",
    "Anton", "Arjun", "Benjamin", "Bilal", "Bogdan", "Carlos", "Charles", "Chinedu",
    "Christopher", "Ciaran", "Daniel", "Darius", "David", "Dmitri", "Edward", "Elias",
    "Emeka", "Enrique", "Eoin", "Farid", "Felipe", "Finn", "Gabriel", "George", "Giovanni",
    "Hamza", "Haruto", "Henry", "Hiroshi", "Ibrahim", "Ivan", "Jakub", "James", "Javier",
    "Jin", "Jonas", "Joseph", "Juan", "Kaito", "Kareem", "Kenji", "Kofi", "Kwame", "Lars",
    "Leon", "Liam", "Lorenzo", "Luca", "Luis", "Malik", "Marco", "Mateo", "Matthew",
    "Mehmet", "Michael", "Mohammed", "Nikhil", "Nikolai", "Oliver", "Omar", "Oscar",
    "Pablo", "Patrick", "Pedro", "Rahul", "Rajesh", "Ravi", "Robert", "Samuel", "Santiago",
    "Sean", "Sebastian", "Sipho", "Stefan", "Tariq", "Thabo", "Thomas", "Tomasz", "Tunde",
    "Vikram", "Wei", "William", "Yusuf", "Zoran",
)

SURNAMES: tuple[str, ...] = (
    "Abara", "Adeyemi", "Ahmed", "Alvarez", "Andersen", "Anderson", "Appiah", "Bailey",
    "Banerjee", "Barker", "Becker", "Bennett", "Bianchi", "Brennan", "Brooks", "Byrne",
    "Campbell", "Castillo", "Chen", "Chowdhury", "Clarke", "Collins", "Costa", "Cruz",
    "Dasgupta", "Davies", "Dimitrov", "Dubois", "Duffy", "Edwards", "Eze", "Fernandes",
    "Fischer", "Fitzgerald", "Fleming", "Fraser", "Gallagher", "Garcia", "Gonzalez",
    "Gordon", "Greene", "Gupta", "Haddad", "Hall", "Hansen", "Harris", "Hassan", "Hayes",
    "Henderson", "Hoffmann", "Hughes", "Hussain", "Ibrahim", "Ito", "Ivanova", "Jackson",
    "Jansen", "Jensen", "Johnson", "Jones", "Kaur", "Kelly", "Kennedy", "Khan", "Kim",
    "Kowalski", "Kumar", "Larsen", "Lee", "Lewis", "Lindqvist", "Lopez", "Mahmoud",
    "Marshall", "Martin", "Martinez", "Mbeki", "McCarthy", "McDonald", "Mehta", "Mendes",
    "Meyer", "Mills", "Mitchell", "Morales", "Moreau", "Morris", "Murphy", "Murray",
    "Nakamura", "Nair", "Ndlovu", "Nguyen", "Nielsen", "Novak", "Nowak", "Nwosu",
    "O'Brien", "O'Connor", "Okafor", "Okonkwo", "Oliveira", "Osei", "Owusu", "Park",
    "Patel", "Pereira", "Perez", "Petrov", "Phillips", "Popescu", "Quinn", "Rahman",
    "Ramirez", "Reddy", "Reyes", "Richter", "Rivera", "Roberts", "Robinson", "Rodriguez",
    "Romano", "Rossi", "Russo", "Said", "Sanchez", "Santos", "Sato", "Schmidt", "Schneider",
    "Scott", "Shah", "Sharma", "Silva", "Singh", "Sokolov", "Stewart", "Suzuki", "Tanaka",
    "Taylor", "Thompson", "Torres", "Tran", "Turner", "Vasquez", "Walker", "Wang", "Ward",
    "Watanabe", "Weber", "White", "Williams", "Wilson", "Wojcik", "Wright", "Yamamoto",
    "Yilmaz", "Young", "Zhang", "Zhou",
)

# --------------------------------------------------------------------------- medicine

# drug -> (doses, frequencies); a prescription is "<drug> <dose> <frequency>".
MEDICATIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "metformin": (("500 mg", "850 mg", "1 g"), ("twice daily",)),
    "gliclazide": (("40 mg", "80 mg"), ("twice daily", "once daily")),
    "empagliflozin": (("10 mg", "25 mg"), ("once daily",)),
    "sitagliptin": (("50 mg", "100 mg"), ("once daily",)),
    "insulin glargine": (("10 units", "14 units", "18 units", "24 units"), ("at night",)),
    "amlodipine": (("5 mg", "10 mg"), ("once daily",)),
    "ramipril": (("2.5 mg", "5 mg", "10 mg"), ("once daily",)),
    "lisinopril": (("10 mg", "20 mg"), ("once daily",)),
    "bisoprolol": (("1.25 mg", "2.5 mg", "5 mg"), ("once daily",)),
    "atorvastatin": (("20 mg", "40 mg", "80 mg"), ("at night", "once daily")),
    "simvastatin": (("20 mg", "40 mg"), ("at night",)),
    "apixaban": (("2.5 mg", "5 mg"), ("twice daily",)),
    "rivaroxaban": (("15 mg", "20 mg"), ("once daily",)),
    "warfarin": (("3 mg", "5 mg"), ("once daily, dose adjusted to INR",)),
    "aspirin": (("75 mg",), ("once daily",)),
    "clopidogrel": (("75 mg",), ("once daily",)),
    "furosemide": (("20 mg", "40 mg", "80 mg"), ("once daily", "twice daily")),
    "spironolactone": (("25 mg", "50 mg"), ("once daily",)),
    "glyceryl trinitrate spray": (("400 micrograms",), ("as needed for chest pain",)),
    "levothyroxine": (("50 micrograms", "75 micrograms", "100 micrograms"), ("once daily",)),
    "carbimazole": (("10 mg", "20 mg"), ("once daily",)),
    "propranolol": (("10 mg", "40 mg"), ("twice daily", "three times daily")),
    "omeprazole": (("20 mg", "40 mg"), ("once daily",)),
    "lansoprazole": (("15 mg", "30 mg"), ("once daily",)),
    "paracetamol": (("500 mg", "1 g"), ("four times daily", "as needed")),
    "ibuprofen": (("200 mg", "400 mg"), ("three times daily with food",)),
    "codeine phosphate": (("15 mg", "30 mg"), ("four times daily as needed",)),
    "morphine sulfate": (("5 mg", "10 mg"), ("modified release twice daily",)),
    "amoxicillin": (("500 mg", "1 g"), ("three times daily",)),
    "co-amoxiclav": (("625 mg",), ("three times daily",)),
    "doxycycline": (("100 mg",), ("once daily", "twice daily")),
    "nitrofurantoin": (("50 mg", "100 mg"), ("twice daily",)),
    "ceftriaxone": (("1 g", "2 g"), ("intravenously once daily",)),
    "flucloxacillin": (("500 mg", "1 g"), ("four times daily",)),
    "piperacillin-tazobactam": (("4.5 g",), ("intravenously three times daily",)),
    "oseltamivir": (("75 mg",), ("twice daily for five days",)),
    "aciclovir": (("800 mg",), ("five times daily for seven days",)),
    "prednisolone": (("5 mg", "30 mg", "40 mg"), ("once daily",)),
    "salbutamol inhaler": (("100 micrograms",), ("two puffs as needed",)),
    "tiotropium inhaler": (("18 micrograms", "2.5 micrograms"), ("once daily",)),
    "budesonide-formoterol inhaler": (("200/6 micrograms",), ("two puffs twice daily",)),
    "sertraline": (("50 mg", "100 mg"), ("once daily",)),
    "citalopram": (("10 mg", "20 mg"), ("once daily",)),
    "mirtazapine": (("15 mg", "30 mg"), ("at night",)),
    "levetiracetam": (("250 mg", "500 mg", "750 mg"), ("twice daily",)),
    "lamotrigine": (("50 mg", "100 mg"), ("twice daily",)),
    "co-careldopa": (("12.5/50 mg", "25/100 mg"), ("three times daily",)),
    "donepezil": (("5 mg", "10 mg"), ("at night",)),
    "allopurinol": (("100 mg", "300 mg"), ("once daily",)),
    "colchicine": (("500 micrograms",), ("twice daily",)),
    "methotrexate": (("10 mg", "15 mg"), ("once weekly",)),
    "folic acid": (("5 mg",), ("once weekly",)),
    "alendronic acid": (("70 mg",), ("once weekly",)),
    "calcium and vitamin D": (("one tablet",), ("twice daily",)),
    "ferrous sulfate": (("200 mg",), ("once daily", "twice daily")),
    "tamsulosin": (("400 micrograms",), ("once daily",)),
    "sumatriptan": (("50 mg",), ("as needed for migraine",)),
    "mesalazine": (("2.4 g",), ("once daily",)),
    "enoxaparin": (("40 mg",), ("subcutaneously once daily",)),
    "gabapentin": (("300 mg",), ("three times daily",)),
    "lactulose": (("15 mL",), ("twice daily",)),
    "sodium chloride tablets": (("600 mg",), ("twice daily",)),
}

# drugs of which a record holds at most one (no two anticoagulants, antibiotics, ...)
_DRUG_CLASS: dict[str, str] = {
    **dict.fromkeys(("ramipril", "lisinopril"), "ace inhibitor"),
    **dict.fromkeys(("apixaban", "rivaroxaban", "warfarin", "enoxaparin"), "anticoagulant"),
    **dict.fromkeys(("omeprazole", "lansoprazole"), "proton pump inhibitor"),
    **dict.fromkeys(("sertraline", "citalopram"), "ssri"),
    **dict.fromkeys(("atorvastatin", "simvastatin"), "statin"),
    **dict.fromkeys(("codeine phosphate", "morphine sulfate"), "opioid"),
    **dict.fromkeys(("bisoprolol", "propranolol"), "beta blocker"),
    **dict.fromkeys(
        ("amoxicillin", "co-amoxiclav", "doxycycline", "nitrofurantoin", "ceftriaxone",
         "flucloxacillin", "piperacillin-tazobactam"), "antibiotic"),
}

# condition -> (symptoms, findings, typical drugs). Symptoms read after "presented with";
# findings after "examination/investigation showed".
CONDITIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "community-acquired pneumonia": (
        ("a productive cough and fever", "shortness of breath and pleuritic chest pain",
         "three days of cough, fever and rigors"),
        ("right lower lobe consolidation on chest X-ray", "coarse crackles at the left base"),
        ("amoxicillin", "co-amoxiclav", "doxycycline"),
    ),
    "type 2 diabetes mellitus": (
        ("increased thirst and frequent urination", "fatigue and blurred vision"),
        ("an HbA1c of 74 mmol/mol", "a random glucose of 16.2 mmol/L"),
        ("metformin", "gliclazide", "empagliflozin", "sitagliptin", "insulin glargine"),
    ),
    "hypertension": (
        ("morning headaches", "intermittent dizziness and headaches"),
        ("a clinic blood pressure of 168/98 mmHg", "left ventricular hypertrophy on ECG"),
        ("amlodipine", "ramipril", "lisinopril"),
    ),
    "atrial fibrillation": (
        ("palpitations and light-headedness", "an irregular heartbeat noticed at home"),
        ("an irregularly irregular pulse of 128", "atrial fibrillation with a fast rate on ECG"),
        ("apixaban", "rivaroxaban", "bisoprolol", "warfarin"),
    ),
    "heart failure with reduced ejection fraction": (
        ("worsening breathlessness and ankle swelling", "orthopnoea and poor exercise tolerance"),
        ("bibasal crackles and pitting oedema", "an ejection fraction of 35% on echocardiogram"),
        ("furosemide", "bisoprolol", "ramipril", "spironolactone"),
    ),
    "exacerbation of COPD": (
        ("increased sputum and wheeze", "four days of worsening shortness of breath"),
        ("widespread expiratory wheeze", "oxygen saturations of 88% on room air"),
        ("prednisolone", "tiotropium inhaler", "salbutamol inhaler", "doxycycline"),
    ),
    "asthma": (
        ("a nocturnal cough and chest tightness", "wheeze after exercise"),
        ("a peak flow of 280 L/min", "scattered wheeze on auscultation"),
        ("salbutamol inhaler", "budesonide-formoterol inhaler", "prednisolone"),
    ),
    "acute kidney injury": (
        ("reduced urine output and nausea", "lethargy and poor oral intake"),
        ("a creatinine of 245 micromol/L", "clinical signs of dehydration"),
        ("paracetamol",),
    ),
    "chronic kidney disease stage 3": (
        ("tiredness and itching", "mild ankle swelling"),
        ("an eGFR of 42", "proteinuria on urine dipstick"),
        ("ramipril", "furosemide", "atorvastatin"),
    ),
    "urinary tract infection": (
        ("dysuria and urinary frequency", "new confusion and a fever"),
        ("nitrites and leucocytes on urinalysis", "suprapubic tenderness"),
        ("nitrofurantoin", "ceftriaxone", "amoxicillin"),
    ),
    "cellulitis of the left leg": (
        ("a red, hot and swollen left leg", "spreading redness of the lower leg"),
        ("a well-demarcated area of erythema", "a raised white cell count and CRP"),
        ("flucloxacillin", "doxycycline", "paracetamol"),
    ),
    "deep vein thrombosis": (
        ("calf pain and swelling", "a swollen, tender right calf"),
        ("a thrombus in the popliteal vein on ultrasound", "a positive D-dimer"),
        ("apixaban", "rivaroxaban", "enoxaparin"),
    ),
    "pulmonary embolism": (
        ("sudden pleuritic chest pain", "acute breathlessness on minimal exertion"),
        ("filling defects on CT pulmonary angiogram", "a heart rate of 118 and hypoxia"),
        ("apixaban", "rivaroxaban", "enoxaparin"),
    ),
    "acute appendicitis": (
        ("right iliac fossa pain and vomiting", "central abdominal pain moving to the right"),
        ("rebound tenderness in the right iliac fossa", "an inflamed appendix on ultrasound"),
        ("co-amoxiclav", "paracetamol", "codeine phosphate"),
    ),
    "acute cholecystitis": (
        ("right upper quadrant pain after fatty meals", "fever and upper abdominal pain"),
        ("a positive Murphy's sign", "a thickened gallbladder wall with stones on ultrasound"),
        ("co-amoxiclav", "paracetamol"),
    ),
    "acute pancreatitis": (
        ("severe epigastric pain radiating to the back", "upper abdominal pain and vomiting"),
        ("a lipase over three times the upper limit", "peripancreatic fluid on CT"),
        ("paracetamol", "morphine sulfate", "enoxaparin"),
    ),
    "gastro-oesophageal reflux disease": (
        ("heartburn and acid regurgitation", "a burning chest discomfort after meals"),
        ("mild oesophagitis at endoscopy", "epigastric tenderness"),
        ("omeprazole", "lansoprazole"),
    ),
    "peptic ulcer disease": (
        ("epigastric pain and dark stools", "a small haematemesis"),
        ("a duodenal ulcer at endoscopy", "a haemoglobin of 94 g/L"),
        ("omeprazole", "lansoprazole"),
    ),
    "Crohn's disease": (
        ("abdominal pain and diarrhoea", "weight loss and fatigue"),
        ("terminal ileitis on MRI", "a raised faecal calprotectin"),
        ("prednisolone", "methotrexate", "folic acid"),
    ),
    "ulcerative colitis": (
        ("bloody diarrhoea up to eight times a day", "urgency and crampy abdominal pain"),
        ("continuous colitis at flexible sigmoidoscopy", "a raised CRP and low albumin"),
        ("mesalazine", "prednisolone"),
    ),
    "iron deficiency anaemia": (
        ("tiredness and breathlessness on exertion", "pallor noticed by family"),
        ("a haemoglobin of 88 g/L with a low ferritin", "microcytic red cell indices"),
        ("ferrous sulfate",),
    ),
    "hypothyroidism": (
        ("weight gain and cold intolerance", "tiredness and constipation"),
        ("a TSH of 12.4 mU/L", "dry skin and a slow pulse"),
        ("levothyroxine",),
    ),
    "hyperthyroidism": (
        ("weight loss and tremor", "palpitations and heat intolerance"),
        ("a suppressed TSH with a raised free T4", "a fine tremor and a smooth goitre"),
        ("carbimazole", "propranolol"),
    ),
    "migraine": (
        ("recurrent throbbing headaches with visual aura",
         "headaches with nausea and photophobia"),
        ("a normal neurological examination", "no red flag features"),
        ("sumatriptan", "propranolol", "paracetamol"),
    ),
    "ischaemic stroke": (
        ("sudden weakness of the right arm", "slurred speech and facial droop"),
        ("an acute infarct on MRI", "a NIHSS score of 6"),
        ("aspirin", "clopidogrel", "atorvastatin"),
    ),
    "transient ischaemic attack": (
        ("a brief episode of word-finding difficulty", "transient numbness of the left hand"),
        ("60% carotid stenosis on duplex", "a normal CT head"),
        ("clopidogrel", "atorvastatin", "aspirin"),
    ),
    "epilepsy": (
        ("a witnessed generalised seizure", "episodes of staring and confusion"),
        ("epileptiform discharges on EEG", "a lateral tongue bite"),
        ("levetiracetam", "lamotrigine"),
    ),
    "Parkinson's disease": (
        ("a resting tremor and slowness", "falls and a shuffling gait"),
        ("cogwheel rigidity", "bradykinesia on examination"),
        ("co-careldopa",),
    ),
    "major depressive disorder": (
        ("low mood and poor sleep", "loss of interest and appetite"),
        ("a PHQ-9 score of 19", "no active suicidal intent"),
        ("sertraline", "citalopram", "mirtazapine"),
    ),
    "generalised anxiety disorder": (
        ("persistent worry and palpitations", "poor concentration and restlessness"),
        ("a GAD-7 score of 15", "a normal physical examination"),
        ("sertraline", "citalopram", "propranolol"),
    ),
    "osteoarthritis of the right knee": (
        ("knee pain worse on stairs", "stiffness and swelling of the knee"),
        ("joint space narrowing on X-ray", "crepitus and reduced flexion"),
        ("paracetamol", "ibuprofen", "codeine phosphate"),
    ),
    "rheumatoid arthritis": (
        ("morning stiffness and swollen hands", "painful small joints of both hands"),
        ("a positive anti-CCP antibody", "synovitis of the MCP joints"),
        ("methotrexate", "folic acid", "prednisolone"),
    ),
    "gout": (
        ("an acutely painful, swollen big toe", "sudden pain in the ankle overnight"),
        ("a serum urate of 0.56 mmol/L", "a hot, red first MTP joint"),
        ("colchicine", "allopurinol", "prednisolone"),
    ),
    "fractured neck of femur": (
        ("a fall at home with hip pain", "inability to weight-bear after a fall"),
        ("a shortened, externally rotated leg", "an intracapsular fracture on X-ray"),
        ("paracetamol", "morphine sulfate", "enoxaparin", "alendronic acid"),
    ),
    "sciatica due to a lumbar disc prolapse": (
        ("low back pain radiating down the leg", "leg numbness and back pain"),
        ("a positive straight leg raise", "an L5/S1 disc prolapse on MRI"),
        ("gabapentin", "paracetamol", "ibuprofen"),
    ),
    "osteoporosis": (
        ("back pain after a minor fall", "loss of height"),
        ("a T-score of -2.9 on DEXA", "a vertebral wedge fracture"),
        ("alendronic acid", "calcium and vitamin D"),
    ),
    "psoriasis": (
        ("itchy scaly plaques on the elbows", "a flare of scaly patches on the scalp"),
        ("well-defined silvery plaques", "nail pitting"),
        ("methotrexate", "folic acid"),
    ),
    "sepsis": (
        ("fever, rigors and confusion", "feeling generally unwell with shaking chills"),
        ("a lactate of 3.8 mmol/L", "hypotension responsive to fluids"),
        ("piperacillin-tazobactam", "ceftriaxone"),
    ),
    "stable angina": (
        ("chest tightness on exertion", "exertional chest pain relieved by rest"),
        ("ST depression on exercise testing", "a normal resting ECG"),
        ("aspirin", "bisoprolol", "glyceryl trinitrate spray", "atorvastatin"),
    ),
    "non-ST-elevation myocardial infarction": (
        ("central chest pain at rest", "chest pain radiating to the left arm"),
        ("a rising troponin", "lateral ST depression on ECG"),
        ("aspirin", "clopidogrel", "atorvastatin", "bisoprolol"),
    ),
    "obstructive sleep apnoea": (
        ("loud snoring and daytime sleepiness", "witnessed apnoeas at night"),
        ("an apnoea-hypopnoea index of 32", "an Epworth score of 16"),
        ("amlodipine",),
    ),
    "benign prostatic hyperplasia": (
        ("a poor urinary stream and nocturia", "hesitancy and incomplete emptying"),
        ("a smooth, enlarged prostate", "a post-void residual of 180 mL"),
        ("tamsulosin",),
    ),
    "renal colic": (
        ("severe loin-to-groin pain", "flank pain and blood in the urine"),
        ("a 5 mm ureteric stone on CT", "microscopic haematuria"),
        ("ibuprofen", "paracetamol", "tamsulosin"),
    ),
    "alcohol-related liver cirrhosis": (
        ("abdominal swelling and jaundice", "confusion and easy bruising"),
        ("ascites on ultrasound", "a low albumin and raised bilirubin"),
        ("spironolactone", "lactulose", "propranolol"),
    ),
    "sigmoid diverticulitis": (
        ("left lower abdominal pain and fever", "altered bowel habit and abdominal pain"),
        ("sigmoid diverticulitis on CT", "left iliac fossa tenderness"),
        ("co-amoxiclav", "paracetamol"),
    ),
    "shingles": (
        ("a painful blistering rash on one side of the chest", "burning pain before a rash"),
        ("a dermatomal vesicular rash", "a rash confined to one dermatome"),
        ("aciclovir", "paracetamol", "gabapentin"),
    ),
    "influenza A": (
        ("fever, myalgia and a dry cough", "sudden fever and aching limbs"),
        ("a positive influenza A swab", "a clear chest X-ray"),
        ("oseltamivir", "paracetamol"),
    ),
    "COVID-19 pneumonia": (
        ("fever and a dry cough", "loss of smell and breathlessness"),
        ("a positive SARS-CoV-2 PCR", "bilateral ground-glass changes"),
        ("prednisolone", "enoxaparin"),
    ),
    "Alzheimer's dementia": (
        ("progressive memory loss", "getting lost in familiar places"),
        ("a MoCA score of 18", "generalised atrophy on CT head"),
        ("donepezil",),
    ),
    "hyponatraemia": (
        ("confusion and unsteadiness", "nausea and a fall"),
        ("a sodium of 121 mmol/L", "low serum osmolality"),
        ("sodium chloride tablets",),
    ),
}

# conditions that read with an indefinite article in prose ("admitted with a ...")
_WITH_ARTICLE: dict[str, str] = {
    "exacerbation of COPD": "an",
    "urinary tract infection": "a",
    "transient ischaemic attack": "a",
    "fractured neck of femur": "a",
    "non-ST-elevation myocardial infarction": "a",
}

HOSPITALS: tuple[str, ...] = (
    "St Aldric's Hospital", "Northfield General Hospital", "Riverside Medical Centre",
    "Hollowbrook District Hospital", "Kingsmere University Hospital", "Eastgate Infirmary",
    "Westcombe Community Hospital", "Marlow Vale Hospital", "Ashcroft Royal Hospital",
    "Lindenfield Hospital", "Harbourside General Hospital", "Thornbury Medical Centre",
)
WARDS: tuple[str, ...] = (
    "the acute medical unit", "Ward 7B", "Ward 12", "the cardiology ward",
    "the respiratory ward", "the surgical assessment unit", "the short-stay ward",
    "Ward 4A", "the elderly care ward", "the observation unit",
)
ROUTES: tuple[str, ...] = (
    "via the emergency department", "by ambulance", "on referral from the GP",
    "via the same-day emergency care unit", "from the outpatient clinic",
)
SOCIAL: tuple[str, ...] = (
    "lives alone and is independent", "lives with {poss} partner", "lives with family",
    "lives in a care home", "is a non-smoker", "is an ex-smoker", "works full time",
    "is retired and lives with {poss} spouse", "drinks about 10 units of alcohol a week",
    "smokes ten cigarettes a day",
)
PLANS: tuple[str, ...] = (
    "repeat bloods in one week", "a GP review in two weeks", "outpatient clinic in six weeks",
    "a physiotherapy referral", "a dietitian review", "smoking cessation advice",
    "a repeat chest X-ray in six weeks", "a medication review with the practice pharmacist",
    "blood pressure monitoring at home", "a community nursing referral",
    "safety-netting advice to return if symptoms worsen", "an echocardiogram as an outpatient",
    "a follow-up telephone call in ten days", "a falls assessment",
)
FOLLOW_UPS: tuple[str, ...] = (
    "in one week", "in two weeks", "in four weeks", "in six weeks", "in three months",
)
COURSES: tuple[str, ...] = (
    "improved steadily", "responded well to treatment", "made a good recovery",
    "recovered without complications", "improved over the following days",
)
TREATMENTS: tuple[str, ...] = (
    "intravenous fluids", "supplemental oxygen", "analgesia", "intravenous antibiotics",
    "close observation", "early mobilisation", "fluid and electrolyte correction",
)

# --------------------------------------------------------------------------- templates

# A template is a sequence of clauses; each clause is a tuple of alternative format
# strings, one of which is chosen per record. Placeholders are filled from the record
# (see _slots). Every template names the patient and the primary condition.
_Template = tuple[tuple[str, ...], ...]

_TEMPLATES: tuple[tuple[str, _Template], ...] = (
    ("admission note", (
        ("Admission note, {hosp}.", "Admission clerking, {ward}.", "Medical admission, {adm}."),
        ("{name}, {a_age} {age}-year-old {sexn}, was admitted {route} on {adm} with {sym}.",
         "{name} ({age}, {sex}) presented {route} on {adm} complaining of {sym}."),
        ("{Hist_sent}",),
        ("On examination there was {find}.", "Examination revealed {find}.",
         "Initial assessment showed {find}."),
        ("Working diagnosis: {c1}.", "Impression is of {c1}.", "Likely {c1}."),
        ("Started on {meds}.", "Plan: {meds}, with {plan}.", "Commenced {meds} and {treat}."),
    )),
    ("discharge summary", (
        ("Discharge summary.", "Discharge summary for {name}.", "Summary of inpatient stay."),
        ("{name}, aged {age}, was admitted to {hosp} on {adm}",
         "{name}, {a_age} {age}-year-old {sexn}, was admitted under {clin} on {adm}",
         "Patient {name} ({pid}) was admitted on {adm}"),
        ("with {sym} and was diagnosed with {c1}.",
         "and treated for {c1} after presenting with {sym}."),
        ("{Pron} {course} and was discharged home on {dis} after {los}.",
         "Following {treat}, {pron} {course} and went home on {dis}."),
        ("Discharge medications: {meds}.", "Medications on discharge: {meds}."),
        ("Follow-up {fu}.", "GP to arrange {plan}.", "Plan includes {plan}."),
    )),
    ("clinic letter", (
        ("Dear colleague,", "Dear Dr {gp},", "To the {specialty} team,"),
        ("I reviewed {name}, {a_age} {age}-year-old {sexn}, in clinic today",
         "I saw {title} {last} ({name}, {age}) in the outpatient clinic"),
        ("following an admission with {c1} from {adm} to {dis}.",
         "after {poss} recent stay at {hosp} ({adm} to {dis}) with {c1}."),
        ("{Pron} reports that {poss} symptoms ({sym_short}) have settled.",
         "{Pron} describes ongoing but improving {sym_short}."),
        ("{Pron} remains on {meds}.", "Current medication is {meds}."),
        ("I have arranged {plan}. Yours sincerely, {clin}.",
         "I will see {obj} again {fu}. Kind regards, {clin}."),
    )),
    ("referral note", (
        ("Referral to {specialty}.", "Please see this patient, {specialty} referral.",
         "Urgent referral to {specialty}."),
        ("Thank you for seeing {name} ({pid}), {age} years old,",
         "I would be grateful if you could assess {name}, {a_age} {age}-year-old {sexn},"),
        ("who presented on {adm} with {sym}.", "admitted on {adm} with {sym}."),
        ("Investigations showed {find}, consistent with {c1}.",
         "We found {find} and suspect {c1}."),
        ("{Hist_sent}",),
        ("{Pron} is taking {meds}.", "Medications: {meds}."),
        ("{Pron} was discharged on {dis}.", "Discharged {dis}; many thanks, {clin}."),
    )),
    ("follow-up note", (
        ("Follow-up note.", "Follow-up review.", "Review after discharge."),
        ("{name} attended on {dis} for review of {c1}.",
         "Seen {name}, {age}, after {poss} admission ({adm} to {dis}) for {c1}."),
        ("Originally presented with {sym}.", "{Pron} had presented with {sym}."),
        ("Today {pron} feels much better than at presentation.",
         "Symptoms have largely settled and {pron} is eating and sleeping well."),
        ("Continue {meds}.", "No changes to {meds}.", "Medications unchanged: {meds}."),
        ("Review {fu}.", "Next review {fu}, with {plan}."),
    )),
    ("emergency department note", (
        ("ED note.", "Emergency department record.", "ED attendance, {hosp}."),
        ("{age}{sexl} {name}, brought in {route} on {adm},",
         "{name} ({age}{sexl}) arrived on {adm}"),
        ("with {sym}.", "reporting {sym}."),
        ("Observations stable. Examination: {find}.", "Key finding: {find}.",
         "Triage category 2; assessment showed {find}."),
        ("Diagnosis {c1}.", "Treated as {c1}."),
        ("Given {treat} and started on {meds}; admitted to {ward}.",
         "Started {meds} and admitted to {ward} for {treat}."),
    )),
    ("nursing handover", (
        ("Nursing handover, {ward}.", "Handover note, {ward}.", "Shift handover."),
        ("Bed 14: {name}, {age}, admitted {adm} with {c1}.",
         "{title} {last} ({name}), {age} years, in since {adm} with {c1}."),
        ("Came in with {sym}.", "Presenting complaint was {sym}."),
        ("Receiving {treat}; regular {meds}.", "Meds: {meds}. Also on {treat}."),
        ("{Pron} {social}.", "Socially, {pron} {social}."),
        ("Expected discharge {dis}.", "Planned discharge date {dis}, pending {plan}."),
    )),
    ("GP letter", (
        ("Dear Dr {gp},", "To the general practitioner,", "Dear GP,"),
        ("your patient {name}, date of admission {adm}, was seen at {hosp}",
         "we looked after {name} ({age}) at {hosp} from {adm}"),
        ("with {sym}, and we diagnosed {c1}.", "for {c1}, having presented with {sym}."),
        ("{Pron} was discharged on {dis} after {los} on {meds}.",
         "{Pron} went home on {dis} taking {meds}."),
        ("Please arrange {plan}.", "We would be grateful if you could arrange {plan}."),
        ("Best wishes, {clin}.", "With thanks, {clin}, {specialty}."),
    )),
    ("consultation note", (
        ("{Specialty} consult.", "Inpatient consultation, {specialty}.",
         "Consult requested by the medical team."),
        ("Asked to see {name}, {age}, {sex},",
         "Reviewed {name} ({pid}), {a_age} {age}-year-old {sexn},"),
        ("on {adm} regarding {sym}.", "on {adm} because of {sym}."),
        ("{Hist_sent}",),
        ("Findings: {find}.", "On review there was {find}."),
        ("Impression: {c1}. Recommend {meds} and {plan}.",
         "Assessment: {c1}. Suggest {meds}; we will follow up {fu}."),
    )),
    ("procedure note", (
        ("Procedure note.", "Day case record, {hosp}.", "Procedure report."),
        ("Patient: {name}, {age} years.", "{name} ({age}, {sex}) attended on {adm}."),
        ("Indication: {c1}, with {sym} and {find}.", "Indication was {c1} with {find}."),
        ("The procedure was uncomplicated and {pron} {course}.",
         "Procedure completed without complications; {pron} {course}."),
        ("Home on {dis} with {meds}.", "Discharged {dis} on {meds}."),
        ("Follow-up {fu}.", "Review in clinic {fu} with results."),
    )),
    ("medication reconciliation", (
        ("Pharmacy note.", "Medication reconciliation.", "Pharmacist review, {ward}."),
        ("{name} ({pid}), {age}, admitted {adm} with {c1}.",
         "Reviewed medicines for {name}, {age}, in since {adm} with {c1}."),
        ("{Hist_sent}",),
        ("Current list: {meds}.", "Confirmed regimen: {meds}.", "Medicines checked: {meds}."),
        ("Counselled on side effects and adherence.", "{Pron} understands the new doses."),
        ("Discharge supply ready for {dis}.", "Suitable for discharge on {dis}; {plan}."),
    )),
    ("telephone consultation", (
        ("Telephone consultation.", "Telephone review.", "Video consultation note."),
        ("Spoke with {name}, {age},", "Called {title} {last} ({name}, {age})"),
        ("after {poss} discharge on {dis} following treatment for {c1}.",
         "who was an inpatient from {adm} to {dis} with {c1}."),
        ("{Pron} says the symptoms ({sym_short}) are much better.",
         "No further {sym_short}; {pron} is coping well at home."),
        ("Taking {meds} as prescribed.", "Confirms taking {meds}."),
        ("Plan: {plan}.", "Safety-netting given; review {fu}."),
    )),
    ("progress note", (
        ("Ward round, day {day}.", "Progress note, {ward}.", "Daily review."),
        ("{name}, {age}{sexl}, admitted {adm} with {c1}.",
         "{name} ({age}) remains in {ward} with {c1}."),
        ("Initially had {sym}.", "Admitted with {sym}."),
        ("{Pron} has {course}; overnight observations stable.",
         "Clinically improving; latest review showed {find}."),
        ("Continue {meds}.", "On {meds} and {treat}."),
        ("Aim for discharge on {dis}.", "Estimated discharge {dis}, then {plan}."),
    )),
    ("transfer note", (
        ("Transfer note.", "Inter-hospital transfer letter.", "Transfer of care."),
        ("{name}, {a_age} {age}-year-old {sexn}, is being transferred from {ward} to {hosp}.",
         "We are transferring {name} ({age}) to {hosp} for ongoing care."),
        ("Admitted {adm} with {sym}; diagnosis {c1}.",
         "{Pron} was admitted on {adm} with {c1} after presenting with {sym}."),
        ("Key result: {find}.", "Imaging and bloods showed {find}."),
        ("Current treatment: {meds}.", "Receiving {meds}."),
        ("Contact {clin} with questions.", "Transfer date {dis}; contact {clin}."),
    )),
    ("rehabilitation assessment", (
        ("Rehabilitation assessment.", "Therapy assessment, {ward}.", "Physiotherapy note."),
        ("{name}, {age}, admitted on {adm} with {c1},",
         "Assessed {name} ({age}, {sex}), who has {c1},"),
        ("presented with {sym}.", "initially had {sym}."),
        ("{Pron} {social} and is now mobilising with a frame.",
         "Mobility improving; {pron} {social}."),
        ("Medication: {meds}.", "On {meds}."),
        ("Discharge planned {dis} with {plan}.", "Home on {dis}; {plan}."),
    )),
    ("history summary", (
        ("Clinical summary.", "Patient summary.", "Case summary."),
        ("{name} is {a_age} {age}-year-old {sexn} who {social}.",
         "{name}, {age}, {social}."),
        ("{Hist_sent}",),
        ("On {adm} {pron} developed {sym} and was found to have {find}.",
         "{Pron} presented on {adm} with {sym}; tests showed {find}."),
        ("The diagnosis was {c1}, treated with {meds}.", "{C1} was diagnosed and {meds} started."),
        ("Discharged {dis}.", "Went home on {dis} after {los}."),
    )),
    ("problem-oriented note", (
        ("Problem list for {name}.", "Problems, {name} ({pid})."),
        ("1. {C1}, diagnosed {adm}, presenting with {sym}.",
         "1. {C1} (admitted {adm}): {sym}."),
        ("2. {Hist_item}.",),
        ("Medications: {meds}.", "Drugs: {meds}."),
        ("Examination: {find}.", "Key finding: {find}."),
        ("Plan: {plan}; discharge {dis}.", "Discharged {dis}; {plan}."),
    )),
    ("SOAP note", (
        ("S: {name}, {age}{sexl}, reports {sym}.", "S: {name}, aged {age}, complains of {sym}."),
        ("O: {Find}.", "O: examination showed {find}."),
        ("A: {c1}, admitted {adm}.", "A: {c1}; in hospital since {adm}."),
        ("P: {meds}; {plan}.", "P: start {meds}, then {plan}."),
        ("Discharged {dis}. Signed {clin}.", "Expected discharge {dis}. {clin}."),
    )),
    ("pre-operative assessment", (
        ("Pre-operative assessment.", "Pre-assessment clinic note.",
         "Anaesthetic pre-assessment."),
        ("{name}, {a_age} {age}-year-old {sexn}, admitted {adm} with {c1}, was seen before"
         " a planned procedure.",
         "Assessed {name} ({age}), an inpatient since {adm} with {c1}, before a planned"
         " procedure."),
        ("Presenting symptoms: {sym}.", "{Pron} had {sym}."),
        ("{Hist_sent}",),
        ("Regular medications: {meds}.", "Takes {meds}."),
        ("Fit for surgery; expected discharge {dis}.", "Proceed; anticipated discharge {dis}."),
    )),
    ("mental health review", (
        ("Psychiatry liaison note.", "Mental health review.", "Liaison assessment."),
        ("Saw {name}, {age}, on {adm}", "{name} ({age}, {sex}) was seen on {adm}"),
        ("in {ward} while being treated for {c1}.", "during an admission for {c1}."),
        ("{Pron} described {sym}.", "Presenting concerns included {sym}."),
        ("{Pron} {social}. Current medication: {meds}.", "Medication: {meds}. {Pron} {social}."),
        ("Discharged {dis} with {plan}.", "Follow-up {fu}; discharged {dis}."),
    )),
    ("outpatient review", (
        ("Outpatient review, {specialty}.", "Clinic review.", "Review in {specialty} clinic."),
        ("{name} ({pid}), aged {age}, attended on {dis}.",
         "Saw {name}, {a_age} {age}-year-old {sexn}, on {dis}."),
        ("Referred after admission on {adm} with {sym}.",
         "Background: admitted {adm} with {c1}."),
        ("Results showed {find}.", "Investigations: {find}."),
        ("Diagnosis confirmed as {c1}; continue {meds}.", "Plan: {meds} for {c1}."),
        ("See again {fu}.", "Discharged back to GP with {plan}."),
    )),
    ("incident note", (
        ("Clinical incident note.", "Datix-style note.", "Ward incident record."),
        ("{name}, {age}, an inpatient since {adm} with {c1},",
         "While on {ward} with {c1}, {name} ({age})"),
        ("had a minor fall; no injury was found.", "had a brief episode of confusion overnight."),
        ("{Pron} originally presented with {sym}.", "{Pron} had been admitted with {sym}."),
        ("Medications reviewed: {meds}.", "Current drugs: {meds}."),
        ("{Pron} was discharged as planned on {dis}.", "No harm; discharge went ahead on {dis}."),
    )),
    ("short discharge", (
        ("{name}, {age}{sexl}.", "{name} ({pid}), {age}."),
        ("Admitted {adm} with {sym}; diagnosed {c1}.",
         "In: {adm}. Out: {dis}. Diagnosis: {c1}, after {sym}."),
        ("{Find} on admission.", "Found to have {find}."),
        ("Treated with {treat} and {pron} {course}.", "{Pron} {course} with {treat}."),
        ("Discharged {dis} on {meds}.", "Take-home medication: {meds}."),
        ("{Hist_sent}",),
        ("Plan: {plan}.", "Follow-up {fu}."),
    )),
    ("community nursing referral", (
        ("District nursing referral.", "Community team referral.",
         "Referral to community nursing."),
        ("Please visit {name}, {age}, who {social},",
         "Requesting visits for {name} ({age}), who {social},"),
        ("discharged from {hosp} on {dis}", "home from {hosp} since {dis}"),
        ("after treatment for {c1} (admitted {adm}).",
         "following an admission for {c1} on {adm}."),
        ("{Pron} presented with {sym}.", "Initial problem was {sym}."),
        ("Medicines: {meds}.", "Please support {obj} with {meds}."),
        ("Also needs {plan}.", "Thank you, {clin}."),
    )),
    ("case conference", (
        ("Multidisciplinary meeting.", "MDT discussion.", "Case conference notes."),
        ("Discussed {name}, {age}-year-old {sexn}, admitted {adm}.",
         "{name} ({pid}, {age}) was discussed today."),
        ("Diagnosis {c1}; presented with {sym}.", "{Pron} came in with {sym} due to {c1}."),
        ("Key result: {find}.", "The team noted {find}."),
        ("Agreed treatment: {meds}.", "Continue {meds}."),
        ("Outcome: discharge {dis} and {plan}.", "Discharge planned for {dis}; follow-up {fu}."),
    )),
    ("admission summary in prose", (
        ("On {adm},", "Early on {adm},", "On the morning of {adm},"),
        ("{name}, {age}, came to {hosp} with {sym}.",
         "{name}, {a_age} {age}-year-old {sexn}, attended {hosp} with {sym}."),
        ("{Hist_sent}",),
        ("Tests showed {find}, and {c1} was diagnosed.",
         "{Find} led to a diagnosis of {c1}."),
        ("{Pron} received {treat} and {meds}.", "Treatment included {meds}."),
        ("{Pron} {course} and left hospital on {dis}.", "Discharge was on {dis} after {los}."),
    )),
)

N_TEMPLATES = len(_TEMPLATES)

_SPECIALTIES: dict[str, str] = {}
_DEFAULT_SPECIALTY = "general medicine"
_SPECIALTY_WORDS = (
    ("cardiology", ("atrial", "heart", "angina", "myocardial", "hypertension")),
    ("respiratory medicine",
     ("pneumonia", "COPD", "asthma", "pulmonary", "apnoea", "COVID", "influenza")),
    ("gastroenterology",
     ("pancrea", "reflux", "peptic", "Crohn", "colitis", "cirrhosis", "diverticul")),
    ("general surgery", ("appendicitis", "cholecystitis")),
    ("endocrinology", ("diabetes", "thyroid", "osteoporosis", "hyponatraemia")),
    ("neurology", ("stroke", "ischaemic attack", "epilepsy", "Parkinson", "migraine", "sciatica")),
    ("psychiatry", ("depressive", "anxiety")),
    ("rheumatology", ("arthritis", "gout")),
    ("orthopaedics", ("femur", "osteoarthritis")),
    ("nephrology", ("kidney",)),
    ("urology", ("prostatic", "renal colic", "urinary")),
    ("dermatology", ("psoriasis", "shingles", "cellulitis")),
    ("haematology", ("anaemia", "thrombosis")),
    ("elderly care", ("dementia",)),
    ("infectious diseases", ("sepsis",)),
)
for _condition in CONDITIONS:
    for _specialty, _words in _SPECIALTY_WORDS:
        if any(word in _condition for word in _words):
            _SPECIALTIES[_condition] = _specialty
            break
    else:
        _SPECIALTIES[_condition] = _DEFAULT_SPECIALTY

_MALE_ONLY_CONDITIONS = frozenset({"benign prostatic hyperplasia"})
_CONDITION_NAMES: tuple[str, ...] = tuple(CONDITIONS)
_FEMALE_CONDITION_NAMES: tuple[str, ...] = tuple(
    c for c in CONDITIONS if c not in _MALE_ONLY_CONDITIONS
)
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")
_LOS_DAYS = (1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 5, 5, 6, 7, 8, 9, 10, 12, 14, 18, 21)
_SPAN_DAYS = (_LAST_DAY - _FIRST_DAY).days - max(_LOS_DAYS)


# --------------------------------------------------------------------------- sampling

class _Draws:
    """Uniform draws from one ``Generator``, fetched in blocks (scalar calls are slow)."""

    _BLOCK = 8192

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._buffer: list[float] = []
        self._next = 0

    def uniform(self) -> float:
        if self._next >= len(self._buffer):
            self._buffer = self._rng.random(self._BLOCK).tolist()
            self._next = 0
        value = self._buffer[self._next]
        self._next += 1
        return value

    def index(self, n: int) -> int:
        return min(int(self.uniform() * n), n - 1)

    def pick(self, items: Sequence[Any]) -> Any:
        return items[self.index(len(items))]

    def integer(self, low: int, high: int) -> int:
        """Uniform integer in ``[low, high]`` (both included)."""
        return low + self.index(high - low + 1)

    def distinct(self, items: Sequence[Any], k: int, exclude: Sequence[Any] = ()) -> list[Any]:
        chosen: list[Any] = []
        while len(chosen) < k:
            item = self.pick(items)
            if item not in chosen and item not in exclude:
                chosen.append(item)
        return chosen


def _join(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def _format_date(day: _dt.date, style: int) -> str:
    if style == 0:
        return day.isoformat()
    if style == 1:
        return f"{day.day} {_MONTHS[day.month - 1]} {day.year}"
    if style == 2:
        return f"{_MONTHS[day.month - 1]} {day.day}, {day.year}"
    return f"{day.day:02d}/{day.month:02d}/{day.year}"


def _compatible(drug: str, chosen: Sequence[str]) -> bool:
    """Whether ``drug`` can join ``chosen``: not already there, no second of its class."""
    if drug in chosen:
        return False
    group = _DRUG_CLASS.get(drug)
    return group is None or all(_DRUG_CLASS.get(other) != group for other in chosen)


def _prose(condition: str) -> str:
    """A condition as it reads in a sentence: 'urinary tract infection' -> 'a urinary ...'."""
    article = _WITH_ARTICLE.get(condition)
    return f"{article} {condition}" if article else condition


def _short_symptom(symptom: str) -> str:
    """'a productive cough and fever' -> 'productive cough and fever' (reads after 'his')."""
    for article in ("a ", "an "):
        if symptom.startswith(article):
            return symptom[len(article):]
    return symptom


def _draw_record(draws: _Draws) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """One record's fields, its text pattern and the pattern's slots (``pid`` unset)."""
    female = draws.uniform() < 0.5
    first = draws.pick(FEMALE_FIRST_NAMES if female else MALE_FIRST_NAMES)
    last = draws.pick(SURNAMES)
    name = f"{first} {last}"
    # ages skew older, as inpatients do: the larger of two uniform draws, half the time
    age = draws.integer(MIN_AGE, MAX_AGE)
    if draws.uniform() < 0.5:
        age = max(age, draws.integer(MIN_AGE, MAX_AGE))

    admission = _FIRST_DAY + _dt.timedelta(days=draws.index(_SPAN_DAYS + 1))
    los = draws.pick(_LOS_DAYS)
    discharge = admission + _dt.timedelta(days=los)

    possible = _FEMALE_CONDITION_NAMES if female else _CONDITION_NAMES
    primary = draws.pick(possible)
    n_comorbid = draws.pick((0, 0, 1, 1, 1, 2))
    comorbid = draws.distinct(possible, n_comorbid, exclude=(primary,))
    conditions = [primary, *comorbid]

    symptoms, findings, typical = CONDITIONS[primary]
    symptom = draws.pick(symptoms)
    finding = draws.pick(findings)
    n_typical = draws.pick((1, 1, 1, 2, 2, 3))
    drugs: list[str] = []
    for drug in draws.distinct(typical, len(typical)):  # the typical drugs, shuffled
        if len(drugs) < n_typical and _compatible(drug, drugs):
            drugs.append(drug)
    for condition in comorbid:
        if len(drugs) < _MAX_DRUGS and draws.uniform() < 0.6:
            drug = draws.pick(CONDITIONS[condition][2])
            if _compatible(drug, drugs):
                drugs.append(drug)
    medications = []
    for drug in drugs:
        doses, frequencies = MEDICATIONS[drug]
        medications.append(f"{drug} {draws.pick(doses)} {draws.pick(frequencies)}")

    template = draws.index(N_TEMPLATES)
    _, clauses = _TEMPLATES[template]
    date_style = draws.index(4)
    pron, poss, obj = ("she", "her", "her") if female else ("he", "his", "him")
    history = [_prose(c) for c in comorbid]
    primary_prose = _prose(primary)
    specialty = _SPECIALTIES[primary]
    gp = draws.pick(SURNAMES)
    slots = {
        "name": name,
        "first": first,
        "last": last,
        "title": draws.pick(("Mrs", "Ms", "Miss")) if female else "Mr",
        "age": age,
        "a_age": "an" if age == 18 or 80 <= age <= 89 else "a",
        "sex": "female" if female else "male",
        "sexn": "woman" if female else "man",
        "sexl": "F" if female else "M",
        "pron": pron,
        "Pron": _capitalize(pron),
        "poss": poss,
        "obj": obj,
        "adm": _format_date(admission, date_style),
        "dis": _format_date(discharge, date_style),
        "los": f"{los} day" if los == 1 else f"{los} days",
        "day": draws.integer(2, max(2, los)),
        "c1": primary_prose,
        "C1": _capitalize(primary_prose),
        "sym": symptom,
        "sym_short": _short_symptom(symptom),
        "find": finding,
        "Find": _capitalize(finding),
        "Hist_sent": (
            f"Past history includes {_join(history)}." if history
            else draws.pick(("No significant past medical history.",
                             "There is no relevant past medical history.",
                             "Previously fit and well."))),
        "Hist_item": (_capitalize(_join(history)) if history else "No other active problems"),
        "meds": _join(medications),
        "plan": draws.pick(PLANS),
        "fu": draws.pick(FOLLOW_UPS),
        "course": draws.pick(COURSES),
        "treat": draws.pick(TREATMENTS),
        "social": draws.pick(SOCIAL).format(poss=poss),
        "hosp": draws.pick(HOSPITALS),
        "ward": draws.pick(WARDS),
        "route": draws.pick(ROUTES),
        "clin": f"Dr {draws.pick(SURNAMES)}",
        "gp": gp,
        "specialty": specialty,
        "Specialty": _capitalize(specialty),
        "pid": "",  # filled in by the caller once the id is known to be unique
    }
    parts = [draws.pick(options) for options in clauses]
    record = {
        "patient_id": "",
        "name": name,
        "age": age,
        "sex": slots["sex"],
        "admission_date": admission.isoformat(),
        "discharge_date": discharge.isoformat(),
        "conditions": conditions,
        "medications": medications,
        "template": template,
    }
    return record, " ".join(parts), slots


def _fits(text: str) -> bool:
    """Whether ``text`` has 40 to 90 words and a token estimate within the limit."""
    words = len(text.split())
    if not MIN_WORDS <= words <= MAX_WORDS:
        return False
    return words + len(_SYMBOL.findall(text)) <= MAX_TOKEN_ESTIMATE


def generate_patient_records(n: int, *, seed: int) -> list[dict[str, Any]]:
    """``n`` distinct synthetic (fictional) patient records, determined by ``seed``.

    Each record is a dict with ``text`` (one paragraph of clinical prose, 40 to 90 words)
    and the fields it was written from: ``patient_id`` (unique, ``"MRN"`` and 7 digits),
    ``name``, ``age`` (18 to 95), ``sex`` (``"female"`` or ``"male"``),
    ``admission_date`` and ``discharge_date`` (ISO ``YYYY-MM-DD``, 2015 to 2025, discharge
    1 to 21 days after admission), ``conditions`` (primary diagnosis first),
    ``medications`` (drug, dose, frequency) and ``template`` (index of the note template,
    ``0 <= template < N_TEMPLATES``).

    Only ``numpy.random.default_rng(seed)`` is used. Records whose text repeats an earlier
    one, fall outside the word range or look longer than about 130 tokens
    (:data:`MAX_TOKEN_ESTIMATE`) are redrawn, so texts are distinct and the
    records of ``generate_patient_records(m, seed=s)`` are the first ``m`` of any larger
    ``n`` with the same seed.
    """
    check_int(n, name="n", low=0, hint="the number of records")
    draws = _Draws(np.random.default_rng(check_int(seed, name="seed", low=0)))
    records: list[dict[str, Any]] = []
    seen_texts: set[str] = set()
    seen_ids: set[str] = set()
    redrawn = 0
    for _ in range(int(n)):
        for _attempt in range(_MAX_ATTEMPTS_PER_RECORD):
            record, pattern, slots = _draw_record(draws)
            patient_id = f"MRN{draws.integer(1_000_000, 9_999_999)}"
            while patient_id in seen_ids:
                patient_id = f"MRN{draws.integer(1_000_000, 9_999_999)}"
            slots["pid"] = patient_id
            text = pattern.format(**slots)
            if text not in seen_texts and _fits(text):
                break
            redrawn += 1
        else:  # pragma: no cover - the content lists make this practically unreachable
            raise RuntimeError(
                f"could not draw a new distinct record after {_MAX_ATTEMPTS_PER_RECORD} tries"
            )
        seen_texts.add(text)
        seen_ids.add(patient_id)
        record["patient_id"] = patient_id
        records.append({"text": text, **record})
    logger.debug("generated %d patient records (seed %d, %d redrawn)", len(records), seed, redrawn)
    return records


def write_patient_corpus(path: str | os.PathLike, n: int, *, seed: int) -> Path:
    """Write ``generate_patient_records(n, seed=seed)`` to ``path`` as JSON lines.

    One object per line with ``text`` first, then the structured fields (lists as JSON
    lists), UTF-8. The file is written to a temporary name in the same directory and
    moved into place with ``os.replace``, so ``path`` never holds a partial corpus.
    Returns ``path`` as a :class:`~pathlib.Path`.
    """
    target = Path(path)
    records = generate_patient_records(n, seed=seed)
    with atomic_path(target) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    logger.info("wrote %d synthetic patient records to %s", len(records), target)
    return target
