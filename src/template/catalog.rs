//! The template catalogue: role families with their curricula, the weekly rhythm, level
//! wording and phase names. Data only; `template` turns it into weeks.

/// Role families, each `keywords#topics#projects#docs`. Lists are `|`-separated strings, because
/// rustfmt would give every element of a slice literal its own line. Keywords are matched against
/// the normalised role (see `normalise` in the parent module), `_` standing for a word boundary so that `_ai_` does
/// not match "maintainer". Topics run from basics to capstone. Docs are `;`-separated
/// `tags|title|url` entries; a tagged doc is offered only when a tag is a word of the role.
/// Families are tried in order, so the specific ones come first ("react native" before "react",
/// "cloud security" before "cloud"); the last one, without keywords, is the generic fallback.
pub(super) const FAMILIES: [&str; 9] = [
    "_ios|android|flutter|mobile|react native|swift|kotlin|_dart_#\
     Mobile platforms and tooling setup|Swift, Kotlin or Dart fundamentals|UI building blocks and layouts|\
     Navigation and app structure|State management|Networking and REST APIs|Local storage and offline \
     support|Device APIs: camera, location and notifications|Testing mobile apps|Performance and battery \
     use|Accessibility and localisation|App architecture: MVVM and clean architecture|Mobile app security|\
     Publishing to the app stores|Capstone: a store-ready app#\
     a habit tracker|a recipe browser with offline favourites|a weather app using location|a workout timer \
     with notifications#\
     ios swift|Apple developer documentation|https://developer.apple.com/documentation/;\
     swift ios|The Swift Programming Language|https://docs.swift.org/swift-book/;\
     android kotlin|Android developer guides|https://developer.android.com/guide;\
     flutter dart|Flutter documentation|https://docs.flutter.dev/;\
     native|React Native documentation|https://reactnative.dev/docs/getting-started",
    "security engineer|security analyst|security architect|security consultant|information security|network \
     security|cloud security|application security|appsec|devsecops|secops|cyber|pentest|penetration test|\
     infosec|_soc_|red team|blue team|ethical hack#\
     Security fundamentals and threat modelling|Networking for security|Linux and Windows internals|\
     Cryptography essentials|Web application security: the OWASP Top 10|Authentication and access control|\
     Reconnaissance and vulnerability scanning|Exploitation basics in a lab|Secure coding and code review|\
     Cloud and container security|Logging, detection and SIEM|Incident response and forensics|Threat \
     intelligence and MITRE ATT&CK|Capstone: a full security assessment#\
     a hardened Linux server with an audit report|a threat model for a web app|a log-based detection rule \
     set|an incident response playbook#\
     |OWASP Top Ten|https://owasp.org/www-project-top-ten/;\
     |OWASP Cheat Sheet Series|https://cheatsheetseries.owasp.org/;\
     |MITRE ATT&CK|https://attack.mitre.org/;\
     |PortSwigger Web Security Academy|https://portswigger.net/web-security",
    "full stack|fullstack#\
     How the web works end to end|HTML, CSS and responsive layout|JavaScript and TypeScript fundamentals|\
     Frontend components with React|Backend fundamentals with Node.js|Designing REST APIs|Databases and SQL|\
     Authentication and sessions|Connecting frontend and backend|Testing across the stack|Deployment, CI \
     and environments|Performance and caching|Security essentials for web apps|Capstone: a full-stack \
     product#\
     a recipe sharing app|a personal finance tracker|a team task board|an event booking site#\
     |MDN Web Docs|https://developer.mozilla.org/;\
     |Node.js documentation|https://nodejs.org/docs/latest/api/;\
     |PostgreSQL documentation|https://www.postgresql.org/docs/;\
     react|React documentation|https://react.dev/learn",
    "data engineer|_etl|analytics engineer|data platform|big data|data pipeline|data warehouse#\
     Python for data work|SQL fundamentals|Advanced SQL and window functions|Data modelling and warehousing|\
     Batch ETL and ELT pipelines|Workflow orchestration with Airflow|Distributed processing with Spark|Data \
     quality and testing|Streaming data with Kafka|Cloud data platforms|Data lakes and file formats|\
     Performance tuning and cost control|Data governance, privacy and lineage|Capstone: an end-to-end data \
     platform#\
     a daily weather ETL into PostgreSQL|a star schema for sales analytics|an orchestrated ingestion DAG|a \
     clickstream aggregation job#\
     |Python documentation|https://docs.python.org/3/;\
     |PostgreSQL documentation|https://www.postgresql.org/docs/;\
     |Apache Spark documentation|https://spark.apache.org/docs/latest/;\
     |Apache Airflow documentation|https://airflow.apache.org/docs/",
    "data scien|machine learning|_ml_|_ai_|deep learning|_llm|data analy|mlops|_nlp_|statistic#\
     Python and notebooks for data science|NumPy and pandas|Data visualisation|Statistics and probability|\
     Exploratory data analysis|Linear algebra and calculus for ML|Supervised learning|Model evaluation and \
     validation|Feature engineering|Unsupervised learning|Tree ensembles and gradient boosting|Neural \
     networks and deep learning|NLP and large language models|Deploying and monitoring models|Capstone: an \
     end-to-end ML project#\
     a house price predictor|a customer churn classifier|a sentiment analysis model|an image classifier \
     using transfer learning#\
     |Python documentation|https://docs.python.org/3/;\
     |pandas documentation|https://pandas.pydata.org/docs/;\
     |scikit-learn user guide|https://scikit-learn.org/stable/user_guide.html;\
     |PyTorch tutorials|https://pytorch.org/tutorials/",
    "devops|cloud|_sre_|site reliability|platform engineer|infrastructure|kubernetes|_aws_|azure|_gcp_|\
     sysadmin#\
     Linux and the command line|Networking fundamentals|Shell scripting and automation|Git and \
     collaboration workflows|Containers with Docker|CI/CD pipelines|Infrastructure as code with Terraform|\
     Cloud fundamentals: compute, storage and IAM|Kubernetes fundamentals|Configuration and secrets \
     management|Monitoring, logging and alerting|SRE practices: SLOs and incident response|Scaling, \
     resilience and cost|Capstone: a production-grade platform#\
     a containerised web app with health checks|a CI pipeline with tests and image builds|a Kubernetes \
     deployment with autoscaling|a monitoring dashboard with alerts#\
     |Kubernetes documentation|https://kubernetes.io/docs/;\
     |Docker documentation|https://docs.docker.com/;\
     |Terraform documentation|https://developer.hashicorp.com/terraform/docs;\
     |Google SRE books|https://sre.google/books/;\
     aws|AWS documentation|https://docs.aws.amazon.com/;\
     azure|Azure documentation|https://learn.microsoft.com/azure/;\
     gcp|Google Cloud documentation|https://cloud.google.com/docs",
    "frontend|front end|_web|_react|_vue|angular|javascript|typescript|_ui_|_css|_html#\
     How the web works: HTTP, browsers and DevTools|Semantic HTML and accessibility basics|CSS \
     fundamentals: box model, flexbox and grid|Responsive design and modern CSS|JavaScript fundamentals|The \
     DOM, events and browser APIs|Asynchronous JavaScript and fetching data|TypeScript essentials|\
     Component-based UI with React|State management and data flow|Routing and forms in single-page apps|\
     Testing frontend code|Performance and Core Web Vitals|Build tooling and deployment|Capstone: a \
     production-ready web app#\
     a responsive portfolio landing page|a to-do app with local storage|a weather dashboard backed by a \
     public API|an accessible multi-step signup form#\
     |MDN Web Docs|https://developer.mozilla.org/;\
     |web.dev Learn|https://web.dev/learn;\
     react|React documentation|https://react.dev/learn;\
     typescript|TypeScript handbook|https://www.typescriptlang.org/docs/;\
     vue|Vue.js guide|https://vuejs.org/guide/",
    "backend|back end|_api|server side|golang|_go_developer|_rust|_java_|node|django|spring|_rails|_php|\
     software|programmer#\
     How the web works: HTTP, DNS and TLS|A backend language in depth|Version control and the command line|\
     Designing REST APIs|Relational databases and SQL|Data modelling and migrations|Authentication and \
     authorization|Testing backend services|Error handling, logging and observability|Caching and \
     performance|Message queues and background jobs|Concurrency and scalability|Containers and deployment|\
     System design fundamentals|Capstone: a production-ready backend service#\
     a URL shortener API|a bookmarks service with user accounts|a job queue with retries|a webhook delivery \
     service#\
     |MDN HTTP guide|https://developer.mozilla.org/en-US/docs/Web/HTTP;\
     |PostgreSQL documentation|https://www.postgresql.org/docs/;\
     rust|The Rust Programming Language|https://doc.rust-lang.org/book/;\
     python django|Python documentation|https://docs.python.org/3/;\
     go golang|Go documentation|https://go.dev/doc/;\
     node|Node.js documentation|https://nodejs.org/docs/latest/api/;\
     java spring|Spring guides|https://spring.io/guides",
    "#\
     Landscape of the field and core vocabulary|Essential tools and workspace setup|Fundamental techniques, \
     step by step|Core principles behind quality work|Deliberate practice of the basics|Standards, safety \
     and professional norms|Intermediate techniques|Workflow and time management|Studying expert work|\
     Troubleshooting and learning from mistakes|Advanced techniques|Building a portfolio|Specialisation and \
     personal style|Capstone: a signature piece that shows your range|Career readiness and next steps#\
     a small showcase piece|a documented practice routine|a before-and-after improvement study|a short \
     guide that teaches a beginner#\
     |A respected introductory textbook for the field|;\
     |Notes from an experienced practitioner or mentor|;\
     |Your own learning journal|",
];

/// The weekly rhythm: per day a title, then `;`-separated tasks `kind|weight|docs|title|text`.
/// Weights split the day's minutes, `docs` is how many resources to attach, and a `^` in a title
/// offers an alternative picked by hash. Tasks are in priority order: a small budget keeps the
/// first ones only.
pub(super) const RHYTHM: [&str; 7] = [
    "Concepts;\
     learn|3|2|Study the core ideas of {t}^Read up on {t}|Read {ref} and one {adj} guide on {t}. {depth};\
     learn|1|1|Map {t} to real {role} work|List where {t} shows up in day-to-day {role} work and note the \
     questions you still have.;\
     review|1|0|Write a one-page summary|Summarise {t} in your own words, with one diagram or worked \
     example.",
    "Guided practice;\
     practice|3|1|Follow a guided walkthrough of {t}^Guided exercises on {t}|Work through a tutorial or \
     official example step by step, doing every step yourself instead of just reading along. {depth};\
     learn|1|1|Deep-dive into one tricky part of {t}^Compare two approaches to {t}|Pick the part of {t} \
     that felt least clear and study it until you can explain when to use it and when not to.",
    "Exercises;\
     practice|3|1|Solve {count} exercises on {t}|Work through {count} exercises on {t} without looking at \
     solutions first, and time-box each one.;\
     practice|1|0|Drill the essentials of {t}^Speed-run the basics of {t}|Repeat the core moves of {t} \
     until they feel automatic and note anything you still have to look up.;\
     review|1|1|Check your solutions|Compare your answers with reference solutions or {ref} and log each \
     mistake in a learning journal.",
    "Project kickoff;\
     project|1|0|Plan the project: {p}|Write a short scope for {p}: the goal, three must-have features and \
     what done looks like.{focus};\
     project|3|1|Build the first slice of {p}|Get the smallest end-to-end version of {p} working, applying \
     {t}. {depth}",
    "Build day;\
     project|3|1|Implement the core of {p}^Grow {p} feature by feature|Add the must-have features to {p}, \
     saving or committing progress after each one.;\
     practice|1|0|Test and verify {p}|Check {p} against your done criteria, add tests or a checklist where \
     it makes sense, and fix what fails.",
    "Polish and document;\
     project|2|0|Polish and document {p}|Tidy rough edges, write a short README or notes that explain your \
     decisions, and add the result to your portfolio.;\
     review|1|1|Self-review against best practice|Review your work against the guidance on {t} in {ref} \
     and list three concrete improvements.;\
     practice|1|0|Get feedback on {p}^Share {p}|Show {p} to a peer, mentor or community and ask one \
     specific question about it.",
    "Review and reflect;\
     review|2|0|Weekly recap: {t}|Re-read your notes, redo the hardest exercise without help, and write \
     down what you would do differently as a {role}.;\
     practice|1|0|Quiz yourself on {t}^Flashcards for {t}|Turn the week's key terms into flashcards or a \
     ten-question quiz and answer them from memory.;\
     learn|1|1|Look ahead|Skim material on {next} and write down two questions to answer.",
];

/// Per experience level, indexed by `ExperienceLevel as usize` (beginner, intermediate,
/// advanced): `adjective|depth advice|exercise count`.
pub(super) const LEVEL_WORDS: [&str; 3] = [
    "beginner-friendly|Go slowly, note every new term and look up anything unclear.|five small",
    "practical|Connect it to what you already know and note the trade-offs.|three realistic",
    "in-depth|Focus on edge cases, performance and production trade-offs.|two hard, open-ended",
];

/// Phase names for outlines of 1, 2, 3 and 4 phases.
pub(super) const STAGES: [&str; 4] = [
    "From foundations to a first project",
    "Foundations|Applied projects and capstone",
    "Foundations|Core skills|Advanced topics and capstone",
    "Foundations|Core skills|Applied practice|Advanced topics and capstone",
];
