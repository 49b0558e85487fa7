# Exact case deletion: lme4's default refit (what HLMdiag's case_delete runs) against the same
# refit with the optimiser run to convergence, for the cases where interlace and HLMdiag differ
# most (see README.md). Run from this directory: Rscript make_tight_refits.R
suppressMessages({
  library(lme4)
  library(jsonlite)
})

tight <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e5))

summarise <- function(m, v0inv, p) {
  list(
    objective = unname(REMLcrit(m)),
    theta = unname(getME(m, "theta")),
    fixef = unname(fixef(m)),
    covtrace = abs(sum(diag(v0inv %*% as.matrix(vcov(m)))) - p)
  )
}

deletions <- function(id, formula, data, drop_rows) {
  full <- lmer(formula, data)
  v0inv <- solve(as.matrix(vcov(full)))
  p <- length(fixef(full))
  cases <- lapply(names(drop_rows), function(name) {
    kept <- data[-drop_rows[[name]], ]
    list(
      case = name,
      lme4_default = summarise(lmer(formula, kept), v0inv, p),
      lme4_tight = summarise(lmer(formula, kept, control = tight), v0inv, p)
    )
  })
  list(id = id, formula = deparse(formula), cases = cases)
}

sleep <- read.csv("../reference/data/sleepstudy.csv")
sleep$Subject <- factor(sleep$Subject)
exam <- read.csv("../reference/data/Exam.csv")
exam$school <- factor(exam$school)
exam$sex <- factor(exam$sex)
schools <- c("28", "17", "29")

out <- list(
  lme4_version = as.character(packageVersion("lme4")),
  models = list(
    # observation-level deletion; rows are R's 1-based row numbers
    deletions("sleepstudy_slopes", Reaction ~ Days + (Days | Subject), sleep,
              list(`56` = 56, `7` = 7, `150` = 150)),
    # school-level deletion
    deletions("exam_slopes", normexam ~ standLRT + sex + (standLRT | school), exam,
              setNames(lapply(schools, function(s) which(exam$school == s)), schools))
  )
)
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), "tight_refits.json")
